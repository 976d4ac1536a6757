import pytest

from training.config import RECIPES, ConfigError, TrainConfig


def test_defaults_are_the_design_report_recipe():
    cfg = TrainConfig()
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.epochs) == ("adam", 1e-3, 0.0, 20)
    assert (cfg.schedule, cfg.step_size, cfg.gamma, cfg.label_smoothing) == ("step", 10, 0.1, 0.0)
    assert cfg.resolved_batch_size(on_cuda=False) == 64
    assert cfg.resolved_batch_size(on_cuda=True) == 128


def test_the_robust_recipes_are_fast_with_cutout_and_corruptions_and_airbench_longer_with_corruptions():
    robust, fast = TrainConfig.for_recipe("robust").to_dict(), TrainConfig.for_recipe("fast").to_dict()
    differ = {k for k in robust if robust[k] != fast[k]}
    assert differ == {"recipe", "cutout", "corrupt_prob"} and (robust["cutout"], robust["corrupt_prob"]) == (8, 0.25)
    airbench = TrainConfig.for_recipe("robust", "airbench").to_dict()
    default = TrainConfig.for_recipe("default", "airbench").to_dict()
    assert {k for k in airbench if airbench[k] != default[k]} == {"recipe", "epochs", "corrupt_prob"}
    assert (airbench["epochs"], airbench["corrupt_prob"]) == (16, 0.2)
    with pytest.raises(ConfigError, match="recipe 'robust' belongs to simplecnn, airbench; residual's recipes are "
                                          "default"):
        TrainConfig.for_recipe("robust", "residual")


def test_recipe_then_explicit_overrides():
    cfg = TrainConfig.for_recipe("fast", lr=0.05)
    assert cfg.recipe == "fast" and cfg.lr == 0.05
    assert cfg.optimizer == RECIPES["simplecnn"]["fast"]["optimizer"]


@pytest.mark.parametrize("bad, message", [
    ({"bogus": 1}, "unknown config option"),
    ({"epochs": 2.5}, "epochs must be int"),
    ({"lr": "0.1"}, "lr must be a finite float"),
    ({"flip": 1}, "flip must be bool"),
    ({"epochs": 0}, "epochs must be positive"),
    ({"batch_size": -4}, "batch_size must be positive"),
    ({"optimizer": "rmsprop"}, "optimizer must be one of"),
    ({"label_smoothing": 1.5}, "label_smoothing"),
    ({"recipe": "turbo"}, "unknown recipe"),
    ({"model": "resnet50"}, "model must be one of"),
    ({"model": "airbench", "recipe": "fast", "dropout": 0.0}, "recipe 'fast' belongs to simplecnn; airbench's"),
    ({"model": "airbench"}, "--dropout is SimpleCNN's"),
    ({"tta_translate": 1}, "needs --tta-flip"),
    ({"pad_mode": "wrap"}, "pad_mode must be one of"),
    ({"recipe": "distill", "distill_weight": 0.9}, "distillation needs a teacher"),
    ({"teacher": "t.pt"}, "--teacher is used by distillation only"),
    ({"distill_weight": 1.5, "teacher": "t.pt"}, "distill_weight must be in"),
    ({"lr": float("nan")}, "lr must be a finite float"),
    ({"weight_decay": float("inf")}, "weight_decay must be a finite float"),
    ({"seed": -1}, "seed must be in"),
    ({"seed": 2**64}, "seed must be in"),
    ({"ema_decay": 0.99, "lookahead_every": 5}, "two weight averages"),
])
def test_bad_values_are_rejected(bad, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(bad)


def test_round_trip_through_dict():
    cfg = TrainConfig.for_recipe("fast", seed=3)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_command_line_flags_override_the_recipe_and_only_given_ones_do():
    from training.cli import config_from_args, get_args_parser

    cfg = config_from_args(get_args_parser().parse_args(["--recipe", "fast", "--crop-padding", "3", "--lr", "0.2"]))
    assert (cfg.crop_padding, cfg.lr, cfg.optimizer) == (3, 0.2, "sgd")
    assert config_from_args(get_args_parser().parse_args(["--recipe", "fast"])).crop_padding == \
        RECIPES["simplecnn"]["fast"].get("crop_padding", TrainConfig().crop_padding)
    # The report's dropout unless a recipe or the flag says otherwise; out of range is refused.
    assert config_from_args(get_args_parser().parse_args([])).dropout == 0.5
    fast = config_from_args(get_args_parser().parse_args(["--recipe", "fast"]))
    assert fast.dropout == RECIPES["simplecnn"]["fast"]["dropout"]
    assert config_from_args(get_args_parser().parse_args(["--recipe", "fast", "--dropout", "0.3"])).dropout == 0.3
    with pytest.raises(ConfigError, match="dropout"):
        config_from_args(get_args_parser().parse_args(["--dropout", "1.0"]))


def test_a_network_alone_runs_its_own_recipe():
    from training.cli import config_from_args, get_args_parser

    cfg = config_from_args(get_args_parser().parse_args(["--model", "airbench"]))
    assert (cfg.model, cfg.recipe, cfg.epochs, cfg.batch_size) == ("airbench", "default", 10, 512)
    assert (cfg.tta_flip, cfg.tta_translate, cfg.pad_mode, cfg.alternate_flip) == (True, 1, "reflect", True)
    assert config_from_args(get_args_parser().parse_args([])).model == "simplecnn"


def test_config_knows_every_registered_network():
    from training import models
    from training.config import MODELS

    assert set(MODELS) == set(models.MODELS) == set(RECIPES)


def test_every_recipe_trains_in_auto_precision_unless_told():
    # docs/experiments.md (issue 17): bf16 showed no cost to the report's recipe, so it takes "auto" as the others.
    for model, recipes in RECIPES.items():
        for name in recipes:
            assert "precision" not in recipes[name], (model, name)
    assert TrainConfig.for_recipe("default").precision == TrainConfig().precision == "auto"
    assert TrainConfig.for_recipe("default", precision="fp32").precision == "fp32"


def test_a_resume_may_turn_the_device_flags_either_way():
    from training.cli import get_args_parser, resume_config

    stored = TrainConfig.for_recipe("default", use_cuda=False, deterministic=True)
    args = get_args_parser().parse_args(["--resume", "run/last.pt", "--cuda", "--no-deterministic"])
    cfg = resume_config(args, stored, "run/last.pt")
    assert cfg.use_cuda is True and cfg.deterministic is False
    kept = resume_config(get_args_parser().parse_args(["--resume", "run/last.pt"]), stored, "run/last.pt")
    assert kept.use_cuda is False and kept.deterministic is True
