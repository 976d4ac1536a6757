"""The residual network (training/models/residual.py): shapes, parameters, its two regularizers, a brief run and
distillation from it (its export and service: tests/test_ensemble.py)."""
from __future__ import annotations

import pytest
import torch

from conftest import run_training
from training.checkpoint import load_checkpoint
from training.models import ResidualNet, create, model_args
from training.models.residual import drop_block, drop_path


def test_parameter_count_and_output_shape():
    model = ResidualNet()
    # airbench's 1,972,792 plus a third conv and BatchNorm per group: 64*64*9 + 256*256*9 * 2 + 2 * (64 + 256 * 2).
    assert sum(p.numel() for p in model.parameters()) == 3_190_456
    frozen = 288 + 3 * (64 + 256 + 256)  # whitening filters, three BatchNorm scales per group
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 3_190_456 - frozen
    x = torch.randn(3, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    out = model.eval()(x)
    assert out.shape == (3, 10) and out.dtype == torch.float32
    assert model.embed(x).shape == (3, 256)
    assert ResidualNet(num_classes=4, widths=(16, 32, 48))(torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_width_scales_each_group_to_a_multiple_of_8():
    assert "widths" not in model_args("residual", 10, 0.0)  # the default width: the arguments checkpoints always had
    wide = model_args("residual", 10, 0.0, width=1.5)
    assert wide["widths"] == [96, 384, 384]
    model = create("residual", **wide)
    assert [g.conv3.out_channels for g in model.layers] == [96, 384, 384] and model.embed(
        torch.randn(2, 3, 32, 32)).shape == (2, 384)


def test_stochastic_depth_is_the_identity_at_eval_and_drops_its_share_in_training():
    torch.manual_seed(0)
    branch = torch.ones(20000, 2, 3, 3)
    assert drop_path(branch, 0.3, training=False) is branch
    dropped = drop_path(branch, 0.3, training=True)
    per_image = dropped.flatten(1)
    # Whole images drop (all of a row or none), at the rate asked, survivors scaled so the mean stays 1.
    values = per_image.unique().tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / 0.7)
    assert (per_image.min(1).values == per_image.max(1).values).all()
    assert (per_image[:, 0] == 0).float().mean().item() == pytest.approx(0.3, abs=0.015)
    assert dropped.mean().item() == pytest.approx(1.0, abs=0.03)
    # In the network: the last group drops at drop_path, earlier ones linearly less; eval ignores it.
    model = ResidualNet(drop_path=0.3)
    assert [g.drop_path for g in model.layers] == pytest.approx([0.1, 0.2, 0.3])
    plain = ResidualNet()
    plain.load_state_dict(model.state_dict())
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(model.eval()(x), plain.eval()(x))


def test_a_dropped_branch_leaves_the_group_its_shortcut():
    torch.manual_seed(1)
    group = create("residual", drop_path=0.5).layers[2].train()
    x = torch.randn(64, 256, 7, 7)
    torch.manual_seed(2)
    out = group(x)
    x0 = group.activ(group.norm1(group.pool(group.conv1(x))))
    shortcut = group.activ(x0)  # the group's output when its branch is dropped
    # BatchNorm in training normalizes with the batch's own statistics, the same in both passes.
    same = [torch.allclose(out[i], shortcut[i], atol=1e-5) for i in range(64)]
    assert 20 <= sum(same) <= 44  # p = 0.5 at the last group: about half the images skip the branch


def test_dropblock_drops_square_blocks_at_about_its_rate_and_is_the_identity_at_eval():
    torch.manual_seed(0)
    x = torch.ones(64, 32, 15, 15)
    assert drop_block(x, 0.2, 3, training=False) is x
    out = drop_block(x, 0.2, 3, training=True)
    zero = out == 0
    # About p of the positions fall (overlapping blocks make it a little less than the paper's gamma aims at).
    assert 0.13 <= zero.float().mean().item() <= 0.22
    assert out.mean().item() == pytest.approx(1.0, abs=1e-4)  # survivors rescaled
    # Every dropped position lies in a dropped 3x3 square (clipped at the border): an isolated zero would be a
    # plain dropout pixel. A square's centre is zero with all 8 neighbours inside the map.
    dilated = torch.nn.functional.max_pool2d((~zero).float(), 3, 1, 1)  # 1 where any kept position is near
    assert (zero & (dilated == 0)).any()
    model = ResidualNet(dropblock=0.2)
    plain = ResidualNet()
    plain.load_state_dict(model.state_dict())
    images = torch.randn(4, 3, 32, 32)
    assert torch.equal(model.eval()(images), plain.eval()(images))


@pytest.mark.parametrize("argv, message", [
    (["--model", "airbench", "--drop-path", "0.1"], "--drop-path regularizes the residual network's groups; "
     "airbench has no place for it"),
    (["--dropblock", "0.1"], "--dropblock regularizes the residual network's groups; simplecnn has no place"),
    (["--model", "residual", "--drop-path", "1"], "--drop-path is a probability and must be in [0, 1)"),
    (["--model", "residual", "--dropblock-size", "0"], "--dropblock-size is a block's side in pixels"),
    (["--model", "airbench", "--width", "1.5"], "--width sets the residual network's channels; airbench has a fixed"),
    (["--model", "residual", "--width", "0"], "--width multiplies the residual network's channels, from 0.25 to 4"),
    (["--model", "residual", "--recipe", "robust"], "recipe 'robust' belongs to simplecnn, airbench; residual's"),
])
def test_bad_regularizer_flags_and_a_recipe_it_lacks_are_one_sentence_and_exit_2(argv, message, capsys, tmp_path):
    assert run_training(*argv, "--checkpoint-dir", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_an_unknown_network_is_refused_with_exit_2(capsys):
    with pytest.raises(SystemExit) as exited:
        run_training("--model", "resnet50")
    assert exited.value.code == 2 and "invalid choice: 'resnet50'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def residual_run(real_subset, tmp_path_factory):
    out = tmp_path_factory.mktemp("residual")
    # Flip TTA only (not airbench's six views, tested in tests/test_airbench.py): the export below runs every graph
    # over the subset several times.
    assert run_training("--model", "residual", "--data", str(real_subset), "--epochs", "2", "--batch-size", "64",
                        "--drop-path", "0.1", "--dropblock", "0.1", "--tta-translate", "0", "--width", "0.5",
                        "--checkpoint-dir", str(out), "--quiet") == 0
    return out


def test_a_brief_run_stores_its_regularizers(residual_run):
    # Its export (every graph, Grad-CAM, OOD score, int8) and service are tested as a member of the ensemble in
    # tests/test_ensemble.py, whose graphs run it whole; the airbench path it shares is tests/test_airbench.py's.
    ckpt = load_checkpoint(residual_run / "best.pt")
    assert ckpt.arch == "residual" and ckpt.config["epochs"] == 2
    # --width 0.5: the channels travel in the checkpoint, so export and --teacher rebuild the narrower network.
    assert ckpt.model_args == {"num_classes": 10, "drop_path": 0.1, "dropblock": 0.1, "dropblock_size": 3,
                               "widths": [32, 128, 128]}


def test_the_residual_network_teaches_simplecnn(residual_run, real_subset, tmp_path):
    assert run_training("--recipe", "distill", "--teacher", str(residual_run / "best.pt"), "--data", str(real_subset),
                        "--epochs", "1", "--batch-size", "64", "--checkpoint-dir", str(tmp_path), "--quiet") == 0
    ckpt = load_checkpoint(tmp_path / "best.pt")
    assert ckpt.arch == "simplecnn" and ckpt.provenance["teacher"]["arch"] == "residual"
