"""Quantisation-aware fine-tuning: prepared modules, the simulated int8 scheme, strip back to the float
model, BatchNorm freezing, and a tiny --task qat run whose qat.pth loads like any checkpoint."""
import copy
from pathlib import Path

import pytest
import torch
from tiny_data import make_tiny_voc, randomize_bn, tiny_overrides
from torch import nn

from configs import load_config
from configs.base_config import BaseConfig, ConfigError
from core.deploy.fake_quant import ActFakeQuant, QatAct, QatConv, QatRepConv, fake_quant_weight
from core.deploy.qat import export_int8
from core.deploy.quant import calibrate, freeze_bn, prepare_qat, qat_summary, set_fake_quant, strip_qat
from core.weights import load_weights
from main import main
from models import build_model
from models.blocks import Conv, RepConv
from utils.checkpoint import load_checkpoint


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread, as the tiny task runs use (train.num_threads=1): on a shared 2-core machine
    two threads per process oversubscribe the cores and these small convolutions slow down tenfold."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model(*overrides: str) -> nn.Module:
    """A small model with non-trivial BatchNorm statistics and affine parameters, in eval mode."""
    torch.manual_seed(0)
    cfg = load_config("bccd_yolo_r18", ["model.channel_sparsity=0.25", *overrides])
    cfg.data.class_names = ["a", "b", "c"]
    return randomize_bn(build_model(cfg).eval())


def images(n: int = 2, size: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def prepared(model: nn.Module) -> nn.Module:
    prepare_qat(model)
    calibrate(model, [images(2, seed=s) for s in range(3)])
    return model


def test_prepare_wraps_every_conv_bn_pair_and_activation_of_the_simple_yolo():
    model = tiny_model()
    n_conv = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    n_act = sum(isinstance(m, nn.LeakyReLU) for m in model.modules())
    prepare_qat(model)
    s = qat_summary(model)
    assert (s["conv"], s["conv_bn"], s["act"], s["repconv"]) == (n_conv, n_bn, n_act, 0)
    assert n_bn == n_conv - 3  # every BN follows a conv; the 3 prediction convs have none
    units = [m for m in model.modules() if isinstance(m, QatConv)]
    inside = {id(m.bn) for m in units if m.bn is not None}
    assert all(id(m) in inside for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    # ResNet blocks apply one activation module twice: after conv1 (quantised already) and after the add.
    act = model.backbone.layer1[0].act
    assert isinstance(act, QatAct) and act.calls == 2
    assert [type(f) for f in act.input_fq] == [nn.Identity, ActFakeQuant]
    # The stem conv reads the normalised input (a new tensor), the next one the quantised max-pool output.
    assert isinstance(model.backbone.conv1.input_fq[0], ActFakeQuant)
    assert isinstance(model.backbone.layer1[0].conv1.input_fq[0], nn.Identity)
    with pytest.raises(ValueError, match="already prepared"):
        prepare_qat(model)


def test_prepare_merges_repconv_and_leaves_the_aux_branch_float():
    model = tiny_model("model.name='v9-t'")
    main_rows = [k for k in model.model if int(k) not in model.aux_indices]
    reps = [m for k in main_rows for m in model.model[k].modules() if isinstance(m, RepConv)]
    in_reps = {id(c) for r in reps for c in r.modules()}
    convs = [m for k in main_rows for m in model.model[k].modules()
             if isinstance(m, nn.Conv2d) and id(m) not in in_reps]
    aux_convs = [m for k in model.model if int(k) in model.aux_indices for m in model.model[k].modules()
                 if isinstance(m, nn.Conv2d)]
    prepare_qat(model)
    s = qat_summary(model)
    assert s["repconv"] == len(reps) > 0
    assert s["conv"] == len(convs)
    assert not any(isinstance(m, QatConv | QatRepConv | QatAct) for k in model.model
                   if int(k) in model.aux_indices for m in model.model[k].modules())
    assert all(isinstance(m, nn.Conv2d) for m in aux_convs)


@pytest.mark.parametrize("overrides", [(), ("model.name='v9-t'",)])
def test_fake_quant_output_is_close_to_float_and_float_mode_is_exact(overrides):
    model = tiny_model(*overrides)
    x = images()
    with torch.no_grad():
        ref = model(x)
        prepared(model).eval()
        fq = model(x)
        set_fake_quant(model, False)
        off = model(x)
    err = (fq - ref).abs()
    assert err.max() > 0  # something is quantised
    assert err.mean() < 0.02 * ref.abs().mean()  # int8 error: small against the outputs
    torch.testing.assert_close(off, ref, atol=1e-5, rtol=1e-5)


def test_strip_gives_the_original_keys_and_the_qat_trained_weights():
    model = tiny_model()
    keys = list(model.state_dict())
    prepared(model).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        model(images()).square().mean().backward()
        opt.step()
        opt.zero_grad()
    float_model = strip_qat(model)
    state = float_model.state_dict()
    assert list(state) == keys
    assert not any(k.startswith("qat.") or "fake" in k for k in state)
    trained = model.backbone.layer1[0].conv1  # a QatConv holding the trained conv and its BN
    torch.testing.assert_close(state["backbone.layer1.0.conv1.weight"], trained.conv.weight, rtol=0, atol=0)
    torch.testing.assert_close(state["backbone.layer1.0.bn1.running_mean"], trained.bn.running_mean,
                               rtol=0, atol=0)
    assert not torch.equal(state["backbone.layer1.0.conv1.weight"], tiny_model().state_dict()[
        "backbone.layer1.0.conv1.weight"])  # the training changed it
    fresh = tiny_model()
    fresh.load_state_dict(state)  # strict: same keys and shapes as an ordinary model
    with torch.no_grad():
        set_fake_quant(model, False)
        torch.testing.assert_close(fresh.eval()(images()), model.eval()(images()), atol=1e-5, rtol=1e-5)
    assert isinstance(model.backbone.layer1[0].conv1, QatConv)  # strip_qat left the QAT model as it was
    with pytest.raises(ValueError, match="not prepared"):
        strip_qat(float_model)


def test_bn_statistics_update_until_frozen_and_weights_keep_training():
    model = prepared(tiny_model())
    bn = model.backbone.layer2[0].conv1.bn
    model.train()
    before = bn.running_mean.clone()
    model(images(seed=5))
    assert not torch.allclose(bn.running_mean, before)
    freeze_bn(model)
    model.train()  # freezing survives a train() call
    frozen, weight = bn.running_mean.clone(), model.backbone.layer2[0].conv1.conv.weight
    model(images(seed=6)).square().mean().backward()
    model(images(seed=7))
    torch.testing.assert_close(bn.running_mean, frozen, rtol=0, atol=0)
    assert weight.grad is not None and weight.grad.abs().sum() > 0


def test_weight_fake_quant_is_per_channel_symmetric_int8():
    w = torch.randn(6, 4, 3, 3)
    w[2] *= 1e-3  # a channel of small weights keeps its own resolution
    q = fake_quant_weight(w)
    for c in range(6):
        scale = w[c].abs().max() / 127
        k = q[c] / scale
        torch.testing.assert_close(k, k.round(), atol=1e-3, rtol=0)
        assert k.abs().max().round() == 127 and len(torch.unique(k.round())) <= 255
        assert (q[c] - w[c]).abs().max() <= scale / 2 + 1e-9
    # The simulated weight of a Conv+BN unit is the quantised folded weight the export holds.
    conv = Conv(4, 8, 3)
    with torch.no_grad():
        conv.bn.running_var.uniform_(0.5, 2.0)
        conv.bn.weight.uniform_(-1.5, 1.5)
    folded, _ = conv.fused_weight_bias()
    unit = prepared(Net(nn.Conv2d(3, 4, 1), conv)).layers[1].conv
    torch.testing.assert_close(unit.deployed_weight(), fake_quant_weight(folded))
    assert all(len(torch.unique(unit.deployed_weight()[c])) <= 255 for c in range(8))


class Net(nn.Module):
    """Layers in sequence (a prepared model must not be an nn.Sequential: it gains a child ``qat``)."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def test_eval_forward_is_the_folded_int8_conv_and_the_merged_repconv():
    torch.manual_seed(0)
    net = randomize_bn(Net(Conv(3, 8, 3), RepConv(8, 8)), mean=0.3, bias=0.0)
    reference = copy.deepcopy(net).eval()
    prepared(net).eval()
    unit, rep = net.layers[0].conv, net.layers[1]
    x = images(seed=3)
    with torch.no_grad():
        w, b = reference.layers[0].fused_weight_bias()
        x_q = net.qat.input_fq(x)
        conv_out = unit.output_fq[0](nn.functional.conv2d(x_q, fake_quant_weight(w), b, padding=1))
        diff = (unit(x_q) - conv_out).abs()
        step = float(unit.output_fq[0].qparams()[0])
        # Equal up to float rounding: a value at a rounding boundary may land one int8 step away.
        assert diff.max() <= step * 1.001 and (diff > 1e-5).float().mean() < 1e-3
        fused = copy.deepcopy(reference.layers[1])
        fused.fuse()
        mw, mb = rep.merged_weight_bias()
        torch.testing.assert_close(mw, fused.fused.weight, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(mb, fused.fused.bias, atol=1e-6, rtol=1e-5)


def test_activation_fake_quant_observes_and_rounds_to_an_int8_grid():
    fq = ActFakeQuant(averaging=0.5)
    x = torch.linspace(-1.0, 3.0, 1000)
    assert torch.equal(fq.eval()(x), x)  # nothing observed yet: pass through
    fq.train()(x)
    assert (float(fq.min_val), float(fq.max_val)) == (-1.0, 3.0)
    fq(x * 2)  # moving average: halfway to the new batch range
    assert (float(fq.min_val), float(fq.max_val)) == pytest.approx((-1.5, 4.5))
    scale = fq.qparams()[0]
    y = fq.eval()(x * 10)
    assert len(torch.unique(y)) <= 256 and y.max() <= 4.5 + scale and y.min() >= -1.5 - scale
    assert float(fq(torch.zeros(3)).abs().max()) == 0.0  # zero is exact
    assert (float(fq.min_val), float(fq.max_val)) == pytest.approx((-1.5, 4.5))  # eval: fixed
    fq.calibrating = True
    fq(torch.tensor([-0.5, 9.0]))
    assert (float(fq.min_val), float(fq.max_val)) == pytest.approx((-1.5, 9.0))  # running min/max


def test_qat_config_errors_name_the_key():
    BaseConfig().validate()
    bad_values = (("qat.epochs", -1), ("qat.lr", 0.0), ("qat.freeze_bn_epoch", -2), ("qat.batch_size", 0))
    for key, value in bad_values:
        bad = BaseConfig()
        bad.set(key, value)
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            bad.validate()


def test_missing_export_extra_is_a_warning_naming_requirements(monkeypatch, tmp_path):
    from loguru import logger

    import core.deploy.qat
    from core.deploy.wire import MissingDependencyError

    def no_extra(cfg, model, out_dir):
        assert cfg.export.formats == ["onnx", "tflite_int8"]
        raise MissingDependencyError("TFLite export needs the Python package 'onnx2tf'")

    monkeypatch.setattr(core.deploy.qat, "export_model", no_extra)
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING")
    try:
        assert export_int8(BaseConfig(), nn.Conv2d(3, 3, 1), tmp_path) == {}
    finally:
        logger.remove(sink)
    assert len(messages) == 1 and "requirements-export.txt" in messages[0] and "onnx2tf" in messages[0]


def test_task_qat_end_to_end_writes_a_checkpoint_load_weights_accepts(tmp_path, monkeypatch):
    from core.evaluation.evaluator import Evaluator
    root = make_tiny_voc(tmp_path / "data", n_train=4, n_val=3)
    ov = tiny_overrides(root, **{"train.epochs": 1})
    assert main(["--config", "bccd_yolo_r18", "--task", "train", "--out", str(tmp_path / "run")] + ov) == 0
    ckpt = tmp_path / "run" / "last.pth"
    out = tmp_path / "qat"
    # The tiny model's fake-quant mAP is 0 at every epoch, so epoch 0 would always stay the best: the real
    # evaluations run, but report scripted scores (epoch 1 the best, not the last), and the float weights
    # each evaluated epoch had are kept to compare with the file.
    real_run, scores, weights = Evaluator.run, {0: 0.1, 1: 0.3, 2: 0.2}, {}

    def scripted(self, model, loader, out_dir=None, epoch=None):
        metrics = real_run(self, model, loader, out_dir, epoch)
        if out_dir is not None and Path(out_dir).name == "val":  # the fake-quant evaluation of an epoch
            weights[epoch] = {k: v.clone() for k, v in strip_qat(model).state_dict().items()}
            metrics = {**metrics, "mAP": scores[epoch]}
        return metrics
    with monkeypatch.context() as m:
        m.setattr(Evaluator, "run", scripted)
        assert main(["--task", "qat", "--ckpt", str(ckpt), "--out", str(out), "qat.epochs=2", "qat.batch_size=4",
                     "qat.freeze_bn_epoch=1", "qat.export_int8=False", "eval.plots=False"]) == 0
    saved = load_checkpoint(out / "qat.pth", required=("model", "config", "class_names", "epoch", "metrics"))
    rows = saved["qat"]["rows"]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert [r["bn"] for r in rows] == ["-", "updating", "frozen"]
    assert [r["fake_quant_mAP"] for r in rows] == [0.1, 0.3, 0.2]
    assert saved["epoch"] == saved["qat"]["best_epoch"] == 1 and saved["metrics"]["mAP"] == 0.3
    # qat.pth holds the float weights of the best epoch (1): moved by its fine-tuning from the calibrated
    # start (epoch 0), and not those of the last epoch (2), which moved them again.
    assert list(saved["model"]) == list(weights[1])
    assert all(torch.equal(v, weights[1][k]) for k, v in saved["model"].items())
    for other in (0, 2):
        assert any(not torch.equal(weights[other][k], v) for k, v in weights[1].items() if k.endswith(".weight")), other
    assert saved["class_names"] == ["RBC", "WBC", "Platelets"]
    assert not list(out.glob("*.tflite")) and not list(out.glob("*.onnx"))  # qat.export_int8=False
    original = load_checkpoint(ckpt)["ema"]["model"]
    assert list(saved["model"]) == list(original)
    model = load_weights(BaseConfig.from_dict(saved["config"]), str(out / "qat.pth"), "cpu")
    assert all(torch.equal(v, saved["model"][k]) for k, v in model.state_dict().items())
    # Epoch 0 (calibrated, not trained) still has the checkpoint's weights: calibration sets quantiser ranges only.
    assert all(torch.equal(v, original[k]) for k, v in weights[0].items() if k.endswith(".weight"))
    # --task val reads it like any checkpoint (config and class names from the file).
    assert main(["--task", "val", "--ckpt", str(out / "qat.pth"), "--out", str(tmp_path / "val")]) == 0
    assert (tmp_path / "val" / "metrics.json").is_file()
