"""Optional API keys (CIFAR10_API_KEYS): the check itself, the setting, and a real `bentoml serve` with keys on."""
from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from conftest import ROOT, Server, cifar_test_images, own_home
from serving.auth import ApiKeys
from serving.config import Settings, SettingsError
from serving.errors import RequestError

KEYS = ("k3y-one", "second-key")
IMG = cifar_test_images(1)[8]  # a ship


def _refusal(keys: ApiKeys, header):
    with pytest.raises(RequestError) as exc:
        keys.check(header)
    return exc.value


def test_only_an_accepted_bearer_key_passes():
    keys = ApiKeys(KEYS)
    keys.check("Bearer k3y-one")
    keys.check("bearer second-key ")  # the scheme is case-insensitive (RFC 7235)
    for header in (None, "", "Bearer", "Bearer ", "Basic k3y-one", "k3y-one", "Bearer k3y-on", "Bearer K3Y-ONE"):
        error = _refusal(keys, header)
        assert (error.status, error.code) == (401, "unauthorized") and "WWW-Authenticate" in error.headers
        assert "k3y-one" not in error.message and "second-key" not in error.message  # keys never echoed


def test_the_setting_takes_a_list_or_a_file_and_refuses_an_empty_one(monkeypatch, tmp_path):
    monkeypatch.delenv("CIFAR10_API_KEYS", raising=False)
    assert Settings.from_env().api_keys == ()
    monkeypatch.setenv("CIFAR10_API_KEYS", " k3y-one, second-key ,")
    settings = Settings.from_env()
    assert settings.api_keys == KEYS and "k3y-one" not in repr(settings)
    secret = tmp_path / "keys"
    secret.write_text("k3y-one\nsecond-key\n")  # a mounted Kubernetes Secret: one key per line
    monkeypatch.setenv("CIFAR10_API_KEYS", str(secret))
    assert Settings.from_env().api_keys == KEYS
    for empty in ("", " , ", str(tmp_path / "empty")):  # (tmp_path is absolute: a file)
        (tmp_path / "empty").write_text("\n")
        monkeypatch.setenv("CIFAR10_API_KEYS", empty)
        with pytest.raises(SettingsError, match="holds no key"):
            Settings.from_env()
    monkeypatch.setenv("CIFAR10_API_KEYS", "/no-such-key-file")
    with pytest.raises(SettingsError, match="cannot be read") as refused:
        Settings.from_env()
    assert "no-such-key-file" not in str(refused.value)  # it might have been a key: never repeated
    many = [os.urandom(32).hex() for _ in range(12)]  # a long list (past any file-name length) is keys, not a path
    monkeypatch.setenv("CIFAR10_API_KEYS", ",".join(many))
    assert Settings.from_env().api_keys == tuple(many)


@pytest.fixture(scope="module")
def keyed(bento_home, tmp_path_factory):
    home = own_home(bento_home, tmp_path_factory.mktemp("keyed"))
    srv = Server("serving.service:CIFAR10Classifier", home, {"CIFAR10_API_KEYS": ",".join(KEYS)})
    yield srv
    srv.stop()


def test_model_endpoints_want_a_key_and_the_rest_stays_open(keyed):
    with httpx.Client(base_url=keyed.url, timeout=60) as http:
        for path, kw in (("/classify", {"files": {"image": IMG.read_bytes()}}),
                         ("/classify_batch", {"files": [("images", IMG.read_bytes())]}),
                         ("/explain", {"files": {"image": IMG.read_bytes()}}), ("/model_info", {})):
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                r = http.post(path, headers=headers, **kw)
                assert r.status_code == 401 and r.json()["code"] == "unauthorized", (path, headers, r.text)
                assert r.headers["www-authenticate"].startswith("Bearer")
            r = http.post(path, headers={"Authorization": "Bearer second-key"}, **kw)
            assert r.status_code == 200, (path, r.text)
        # Refused before the body is read: an upload over the limit without a key is a 401, not a 413.
        big = http.post("/classify", content=b"\0" * (11 * 1024 * 1024), headers={"Content-Type": "image/png"})
        assert big.status_code == 401 and big.json()["code"] == "unauthorized"
        for path in ("/readyz", "/livez", "/metrics", "/", "/docs.json", "/ui", "/schema.json"):
            assert http.get(path).status_code == 200, path
        info = http.get("/model_info", headers={"Authorization": "Bearer k3y-one"}).json()
        assert info["serving"]["api_keys"] is True and "k3y-one" not in str(info)
    assert "k3y-one" not in keyed.log.read_text() and "second-key" not in keyed.log.read_text()


def test_the_client_and_the_command_line_send_the_key(keyed, monkeypatch):
    from clients import Client, ServiceError

    with Client(keyed.url, api_key="k3y-one") as client:
        assert client.classify(IMG).label
    monkeypatch.setenv("CIFAR10_API_KEY", "second-key")
    with Client(keyed.url) as client:
        assert client.classify(IMG).label
    monkeypatch.delenv("CIFAR10_API_KEY")
    with Client(keyed.url) as client, pytest.raises(ServiceError) as refused:
        client.classify(IMG)
    assert refused.value.status == 401 and refused.value.code == "unauthorized"
    cli = [sys.executable, "-m", "clients", "--url", keyed.url, "--json", str(IMG)]
    ok = subprocess.run(cli, capture_output=True, text=True, cwd=ROOT, timeout=60,
                        env={**os.environ, "CIFAR10_API_KEY": "k3y-one"})
    assert ok.returncode == 0 and '"label"' in ok.stdout, ok.stderr
    no_key = subprocess.run(cli, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert no_key.returncode != 0 and "API key" in no_key.stdout + no_key.stderr
    assert "Traceback" not in no_key.stderr


def test_an_empty_key_list_stops_the_service_with_one_sentence(bento_home, tmp_path):
    with pytest.raises(RuntimeError, match="holds no key"):
        Server("serving.service:CIFAR10Classifier", own_home(bento_home, tmp_path), {"CIFAR10_API_KEYS": " , "},
               fail_on="holds no key")
