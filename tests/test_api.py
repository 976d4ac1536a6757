"""The HTTP API beyond multipart: its documentation at / and /docs.json, BentoML's own clients, and the raw and
JSON encodings with every refusal of the multipart one (against a real `bentoml serve`)."""
from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path

import httpx
import pytest
from PIL import Image

from conftest import CIFAR10_CLASSES, cifar_test_images, encode, png_claiming
from serving import openapi
from serving.app import ENDPOINTS
from serving.errors import CODES
from serving.requests import _raw_name

IMG = cifar_test_images(1)[3]  # a cat


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def test_the_openapi_document_is_valid_and_covers_every_route(http):
    from openapi_spec_validator import validate

    doc = http.get("/docs.json").json()
    validate(doc)
    paths = set(doc["paths"])
    ours = {path for path in ENDPOINTS if "{" not in path}
    bentoml_own = {"/readyz", "/livez", "/metrics", "/schema.json"}
    assert ours | bentoml_own <= paths, (ours | bentoml_own) - paths
    for path in paths:  # and everything documented answers
        method = "post" if "get" not in doc["paths"][path] else "get"
        if method == "get":
            assert http.get(path).status_code == 200, path
    # Every error code a client can get is documented, with its status, on the endpoints that give it.
    classify = doc["paths"]["/classify"]["post"]
    documented = " ".join(r["description"] for r in classify["responses"].values())
    for code in openapi.IMAGE_ERRORS:
        assert f"`{code}`" in documented and str(CODES[code][0]) in classify["responses"]
    assert set(classify["requestBody"]["content"]) == {"multipart/form-data", "image/*", "application/octet-stream",
                                                      "application/json"}
    assert "SimpleCNN" in doc["info"]["description"] and "cat" in doc["info"]["description"]


def test_swagger_ui_at_root_with_offline_assets_and_links_between_pages(http):
    page = http.get("/")
    assert page.status_code == 200 and "swagger-ui" in page.text and 'href="ui"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from the internet
    for name in openapi_assets(page.text):
        r = http.get(name)
        assert r.status_code == 200 and len(r.content) > 1000, name
    # Only the allow-listed files: swagger-initializer.js sits in the same folder of BentoML's (httpx would
    # normalize a "../" path away before sending it, so that is no test of the allow-list).
    assert http.get("/docs/static/swagger-initializer.js").status_code == 404
    assert 'href="./"' in http.get("/ui").text


def openapi_assets(html: str) -> list[str]:
    import re
    return ["/" + p for p in re.findall(r'(?:src|href)="(docs/static/[^"]+)"', html)]


def test_bentoml_sync_client_sees_the_routes(server):
    import bentoml

    expected = httpx.post(f"{server.url}/classify", files={"image": (IMG.name, IMG.read_bytes(), "image/jpeg")},
                          data={"top_k": "3"}).json()
    with bentoml.SyncHTTPClient(server.url) as client:
        got = client.classify(image=Path(IMG), top_k=3)
        assert got == expected
        files = [cifar_test_images(1)[i] for i in (3, 0, 5)]  # IMG first, then two others
        batch = client.classify_batch(images=[Path(p) for p in files])
        singles = [httpx.post(f"{server.url}/classify", files={"image": (p.name, p.read_bytes(), "image/jpeg")}).json()
                   for p in files]
        assert [b["label"] for b in batch] == [s["label"] for s in singles]
        assert [b["confidence"] for b in batch] == pytest.approx([s["confidence"] for s in singles], abs=1e-5)
        assert batch[0]["label"] == expected["label"] and client.model_info()["classes"] == CIFAR10_CLASSES
        # The client JSON-encodes text fields ("ship" arrives as '"ship"'): the service reads them either way.
        why = client.explain(image=Path(IMG), target="ship", top_k=2)
        assert why["target"]["label"] == "ship" and len(why["top_k"]) == 2


def test_bentoml_async_client_sees_the_routes(server):
    import bentoml

    async def go():
        async with bentoml.AsyncHTTPClient(server.url) as client:
            return await client.classify(image=Path(IMG), top_k=2)

    got = asyncio.run(go())
    assert len(got["top_k"]) == 2 and got["label"] in CIFAR10_CLASSES


def _json_body(data: bytes, **extra) -> dict:
    return {"json": {"image": base64.b64encode(data).decode(), **extra}}


def _raw_body(data: bytes, **extra) -> dict:
    return {"content": data, "headers": {"content-type": "image/jpeg"},
            "params": {k: str(v) for k, v in extra.items()}}


def _multipart(data: bytes, **extra) -> dict:
    return {"files": {"image": ("x", data, "application/octet-stream")}, "data": {k: str(v) for k, v in extra.items()}}


ENCODINGS = {"multipart": _multipart, "raw": _raw_body, "json": _json_body}


def test_the_three_encodings_give_the_same_answer(http):
    answers = [http.post("/classify", **enc(IMG.read_bytes(), top_k=5)).json() for enc in ENCODINGS.values()]
    assert answers[0]["top_k"] and len(answers[0]["top_k"]) == 5
    assert answers[0] == answers[1] == answers[2]
    # curl -T sends a PUT without a content type; curl --data-binary a form type: both are the raw image.
    put = http.put("/classify", content=IMG.read_bytes()).json()
    form_typed = http.post("/classify", content=IMG.read_bytes(),
                           headers={"content-type": "application/x-www-form-urlencoded"}).json()
    assert (put["label"], put["confidence"]) == (form_typed["label"], form_typed["confidence"]) == \
        (answers[0]["label"], answers[0]["confidence"])
    data_url = "data:image/jpeg;base64," + base64.b64encode(IMG.read_bytes()).decode()
    assert http.post("/classify", json={"image": data_url}).json()["label"] == answers[0]["label"]


def _huge(limit_mb: int = 10) -> bytes:
    return b"\xff\xd8" + b"\0" * (limit_mb * 1024 * 1024 + 10)


REFUSALS = {
    "text file": (lambda: b"this is not an image\n", {}, 400, "not_an_image"),
    "truncated": (lambda: IMG.read_bytes()[:300], {}, 400, "corrupt_image"),
    "empty": (lambda: b"", {}, 400, "empty_file"),
    "bomb": (lambda: png_claiming(50_000, 50_000), {}, 413, "image_too_large"),
    "over the upload limit": (_huge, {}, 413, "payload_too_large"),
    "top_k 0": (lambda: IMG.read_bytes(), {"top_k": 0}, 400, "invalid_top_k"),
    "top_k 11": (lambda: IMG.read_bytes(), {"top_k": 11}, 400, "invalid_top_k"),
    "top_k text": (lambda: IMG.read_bytes(), {"top_k": "many"}, 400, "invalid_top_k"),
    "top_k ++3": (lambda: IMG.read_bytes(), {"top_k": "++3"}, 400, "invalid_top_k"),
    "top_k superscript two": (lambda: IMG.read_bytes(), {"top_k": "\u00b2"}, 400, "invalid_top_k"),
    "top_k of 5,000 digits": (lambda: IMG.read_bytes(), {"top_k": "9" * 5000}, 400, "invalid_top_k"),
}


@pytest.mark.parametrize("encoding", list(ENCODINGS))
@pytest.mark.parametrize("case", list(REFUSALS))
def test_every_refusal_in_every_encoding(http, encoding, case):
    make, extra, status, code = REFUSALS[case]
    r = http.post("/classify", **ENCODINGS[encoding](make(), **extra))
    assert (r.status_code, r.json()["code"]) == (status, code), r.text
    assert http.post("/classify", **_multipart(IMG.read_bytes())).status_code == 200  # still answering


@pytest.mark.parametrize("body, code", [
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, "malformed_json"),
    ({"json": ["a", "list"]}, "malformed_json"),
    ({"json": {"image": "https://example.com/cat.jpg"}}, "invalid_base64"),
    ({"json": {"image": 42}}, "invalid_base64"),
    ({"json": {"image": base64.b64encode(b"x").decode(), "url": "y"}}, "unknown_field"),
    ({"json": {"top_k": 3}}, "missing_field"),
    ({"json": {"image": base64.b64encode(IMG.read_bytes()).decode(), "top_k": True}}, "invalid_top_k"),
    ({"content": b"[" * 100_000, "headers": {"content-type": "application/json"}}, "malformed_json"),
])
def test_json_refusals(http, body, code):
    r = http.post("/classify", **body)
    assert r.status_code == 400 and r.json()["code"] == code, r.text


def test_a_json_body_over_the_limit_is_refused_before_parsing(http):
    body = b'{"image": "' + b"A" * (14 * 1024 * 1024) + b'"}'  # base64 of > 10 MiB, as the bytes arrive
    r = http.post("/classify", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"


def test_batch_in_json_keeps_order_and_refuses_a_raw_body(http):
    files = cifar_test_images(1)[:4]
    images = [base64.b64encode(p.read_bytes()).decode() for p in files]
    got = http.post("/classify_batch", json={"images": images, "top_k": 1}).json()
    single = [http.post("/classify", **_multipart(p.read_bytes())).json()["label"] for p in files]
    assert [g["label"] for g in got] == single and all(len(g["top_k"]) == 1 for g in got)
    r = http.post("/classify_batch", content=files[0].read_bytes(), headers={"content-type": "image/jpeg"})
    assert r.status_code == 415 and r.json()["code"] == "unsupported_media_type"
    r = http.post("/classify_batch", json={"images": images[0]})
    assert r.status_code == 400 and r.json()["code"] == "invalid_base64"


def test_a_png_made_here_in_every_encoding(http):
    png = encode(Image.new("RGB", (64, 48), (200, 30, 30)), "PNG")
    labels = {http.post("/classify", **enc(png)).json()["label"] for enc in ENCODINGS.values()}
    assert len(labels) == 1


def test_every_code_the_api_can_send_is_documented():
    # Every RequestError code in the serving package is in CODES (RequestError refuses others at once).
    import re

    root = Path(__file__).parents[1]
    source = "".join(p.read_text() for p in (root / "serving").rglob("*.py"))
    used = set(re.findall(r'RequestError\(\d+, "([a-z0-9_]+)"', source)) | {"invalid_top_k", "invalid_target"}
    assert used <= set(CODES), used - set(CODES)
    # ...and every documented code can be sent: by the service, or by the decoder (contract/images.py).
    decoder = set(re.findall(r'ImageError\("([a-z0-9_]+)"', (root / "contract" / "images.py").read_text()))
    assert set(CODES) <= used | decoder, set(CODES) - used - decoder


def test_io_is_not_fetched_for_urls(http):
    # A URL in a multipart text field is refused, never fetched (as before), and so is a URL in JSON.
    r = http.post("/classify", data={"image": "http://127.0.0.1:1/cat.jpg"},
                  files={"other": ("x", io.BytesIO(b"x"))})
    assert r.status_code == 400 and r.json()["code"] == "not_a_file"
    assert json.loads(http.post("/classify", json={"image": "http://127.0.0.1:1/x"}).text)["code"] == "invalid_base64"


@pytest.mark.parametrize("header, name", [
    ('attachment; filename="notes.txt"', "notes.txt"),
    ("attachment; filename*=UTF-8''caf%C3%A9.jpg", "café.jpg"),
    ("inline; filename=../../etc/passwd", "passwd"),
    ("attachment", "image"),
    (None, "image"),
])
def test_a_raw_body_is_named_by_content_disposition(header, name):
    class Headers:
        headers = {"content-disposition": header} if header else {}
    assert _raw_name(Headers()) == name


def test_a_raw_body_error_names_the_file(http):
    r = http.post("/classify", content=b"not an image", headers={
        "Content-Type": "application/octet-stream", "Content-Disposition": 'attachment; filename="notes.txt"'})
    assert r.status_code == 400 and r.json()["code"] == "not_an_image" and r.json()["error"].startswith("notes.txt:")


def test_field_parsing_takes_plain_and_json_quoted_text_and_refuses_the_rest():
    from serving.requests import RequestError, target_index, top_k

    assert top_k("5", 10) == top_k(" +5 ", 10) == top_k('"5"', 10) == top_k(5, 10) == 5
    assert target_index("ship", CIFAR10_CLASSES) == target_index('"ship"', CIFAR10_CLASSES) == 8
    assert target_index("8", CIFAR10_CLASSES) == target_index(8, CIFAR10_CLASSES) == 8
    for bad in ("++3", "\u00b2", "9" * 5000, "3.0", "-1", '"', "0x3"):
        with pytest.raises(RequestError):
            top_k(bad, 10)
        with pytest.raises(RequestError):
            target_index(bad, CIFAR10_CLASSES)


def _encoded(size: tuple[int, int], fmt: str, **kw) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", size, (120, 80, 40)).save(buf, fmt, **kw)
    return buf.getvalue()


def _decode_harness(monkeypatch, threads: int, hold: float = 0.0):
    """A Decoder (serving/decoding.py) that records the thread and the concurrency of every pixel decode."""
    import threading
    import time
    from types import SimpleNamespace

    from serving import decoding

    log = SimpleNamespace(threads=[], running=0, most=0, lock=threading.Lock())
    real = decoding.to_input

    def to_input(im, size, resize):
        with log.lock:
            log.threads.append(threading.get_ident())
            log.running += 1
            log.most = max(log.most, log.running)
        try:
            time.sleep(hold)
            return real(im, size, resize)
        finally:
            with log.lock:
                log.running -= 1
    monkeypatch.setattr(decoding, "to_input", to_input)
    return decoding, decoding.Decoder(input_size=32, max_pixels=40_000_000, threads=threads, resize="center-crop"), log


def test_uploads_with_many_pixels_decode_off_the_event_loop_however_small_the_file(monkeypatch):
    # A CIFAR-sized image decodes inline; one with many pixels (up to 40 M: seconds) in a worker thread, so that
    # it cannot stall other requests or the health probes. A flat lossless WebP of 1,000 x 1,000 pixels is a few
    # hundred bytes: the decision must come from the header, not the byte count.
    import threading

    import anyio

    from serving.errors import RequestError

    decoding, decoder, log = _decode_harness(monkeypatch, threads=2)
    small = _encoded((32, 32), "PNG")
    many = _encoded((1000, 1000), "WEBP", lossless=True)
    assert len(many) < 8 * 1024
    loop = []

    async def go(images):
        loop.append(threading.get_ident())
        return await decoder.decode(images)

    assert [a.shape for a in anyio.run(go, [(small, "a")])] == [(32, 32, 3)]
    assert log.threads[-1] == loop[-1]
    out = anyio.run(go, [(small, "a"), (many, "b")])
    assert [a.shape for a in out] == [(32, 32, 3)] * 2 and (out[1] == out[1][0, 0]).all()  # order kept
    # Both on the pool. (Which pool thread takes the second is ThreadPoolExecutor's race between a finished job
    # marking its thread idle and the next submit: under CPU load it sometimes starts the second thread.)
    assert loop[-1] not in log.threads[-2:]
    # A large body has its headers read off the loop too; a bad image there is still the request's error.
    with pytest.raises(RequestError) as exc:
        anyio.run(go, [(many + b"\0" * decoding.INLINE_HEADER_BYTES, "c"), (b"not an image", "d")])
    assert exc.value.status == 400 and exc.value.code == "not_an_image" and exc.value.message.startswith("d:")
    decoder.close()


def test_large_decodes_run_at_most_one_per_pool_thread(monkeypatch):
    # 40 M pixels hold 0.16-0.63 GB while they decode: six concurrent requests on a pool of one decode one at a time.
    import anyio

    decoding, decoder, log = _decode_harness(monkeypatch, threads=1, hold=0.05)
    many = _encoded((400, 400), "PNG")

    async def main():
        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(decoder.decode, [(many, f"r{i}a"), (many, f"r{i}b")])
    anyio.run(main)
    decoder.close()
    assert len(log.threads) == 12 and log.most == 1


def test_a_request_that_times_out_stops_decoding(monkeypatch):
    # The service's timeout cancels the handler (asyncio.timeout); the thread must not decode the rest for nobody.
    import anyio

    decoding, decoder, log = _decode_harness(monkeypatch, threads=1, hold=0.2)
    many = _encoded((400, 400), "PNG")

    async def main():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await decoder.decode([(many, f"image {i}") for i in range(10)])
    anyio.run(main)
    decoder.close()  # waits for the image being decoded when the timeout came; no other may start
    assert len(log.threads) == 1 and log.running == 0
