"""Train the project's bundled model: a small CNN on scikit-learn's digits, written out as ONNX.

Why this exists: the compressor needs one real, trained model with labelled data that ships with the
repository (no download, no GPU), so that pruning / low-rank / quantization tests and benchmarks can
measure a real accuracy drop instead of output noise on random weights. The architecture is chosen
so every pass finds something real: BatchNormalization kept as separate nodes, residual Adds (one with
a stride-2 projection shortcut), a Concat of two branches, a depthwise Conv and a final Gemm.

Why the ONNX graph is written by hand with onnx.helper: torch's exporter folds BatchNormalization into
the Conv weights in eval mode, and the project wants the BN nodes present (BN-aware pruning, folding
passes). Building the graph from the trained state_dict keeps every node and name under our control.

Run by hand (torch is not a project dependency; CI only uses the committed files):

    pip install torch==2.13.0
    python models/train_digits.py            # writes the files next to this script

Outputs (in models/): digits_cnn.onnx, digits_calib.npz, digits_test.npz, digits_test_labels.npy,
digits_cnn.json (training facts and the onnxruntime test accuracy).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from onnxslim_compress.graph.io import clamp_ir_version  # noqa: E402
from onnxslim_compress.graph.shapes import infer_shapes  # noqa: E402

OPSET = 13
IMAGE_SIZE = 32
NUM_CLASSES = 10


@dataclass
class TrainConfig:
    """Everything that decides the result; stored in digits_cnn.json so a rerun can be compared."""

    seed: int = 0
    test_size: int = 360
    calib_size: int = 256
    epochs: int = 14
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    max_shift: int = 2  # random translation (pixels at 32x32) used as training augmentation
    threads: int = 2
    min_accuracy: float = 0.97


# ----------------------------------------------------------------------------------------------
# Data


def preprocess(images_8x8: np.ndarray) -> np.ndarray:
    """Raw sklearn digits (N, 8, 8), values 0..16 -> float32 NCHW (N, 1, 32, 32).

    pixel / 16 gives [0, 1]; no mean/std normalization (the stem BatchNormalization absorbs it).
    Bilinear upsampling x4 with half-pixel centres (torch interpolate, align_corners=False), done here
    rather than in the model so the ONNX input is 1x32x32 and the convolutions carry realistic work.
    """
    x = torch.from_numpy(images_8x8.astype(np.float32) / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return x.numpy().astype(np.float32)


@dataclass
class Split:
    x_train: np.ndarray
    y_train: np.ndarray
    x_calib: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    calib_index: np.ndarray  # indices into the training part


def make_split(cfg: TrainConfig) -> Split:
    """Deterministic stratified split; calibration samples come from the training part only."""
    digits = load_digits()
    x = preprocess(digits.images)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=cfg.test_size, random_state=cfg.seed, stratify=y, shuffle=True
    )
    rng = np.random.default_rng(cfg.seed)
    calib_index = np.sort(rng.choice(len(x_tr), size=cfg.calib_size, replace=False))
    return Split(x_tr, y_tr, x_tr[calib_index], x_te, y_te, calib_index)


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to max_shift pixels (zero fill): cheap augmentation, seeded."""
    if max_shift <= 0:
        return x
    n = x.shape[0]
    padded = F.pad(x, (max_shift,) * 4)
    offs = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=gen)
    out = torch.empty_like(x)
    for i in range(n):
        dy, dx = int(offs[i, 0]), int(offs[i, 1])
        out[i] = padded[i, :, dy : dy + x.shape[2], dx : dx + x.shape[3]]
    return out


# ----------------------------------------------------------------------------------------------
# Model


class ConvBN(nn.Module):
    """Conv (no bias) + BatchNorm, optional ReLU: the unit every ONNX Conv->BN(->Relu) comes from."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, relu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x) if self.relu else x


class BasicBlock(nn.Module):
    """ResNet basic block; a Conv1x1+BN projection shortcut when stride or width change."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = ConvBN(cin, cout, 3, stride)
        self.conv2 = ConvBN(cout, cout, 3, 1, relu=False)
        self.proj = ConvBN(cin, cout, 1, stride, relu=False) if (stride != 1 or cin != cout) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        short = self.proj(x) if self.proj is not None else x
        return F.relu(self.conv2(self.conv1(x)) + short)


class ConcatBlock(nn.Module):
    """Two branches joined by Concat, then a 1x1 fuse (DenseNet / YOLO C2f style).

    Branch a: 1x1. Branch b: 1x1 -> depthwise 3x3 (group = channels) -> 1x1. The Concat makes the
    pruning pass map fuse-conv input channels back to two different producers.
    """

    def __init__(self, cin: int, branch: int, cout: int):
        super().__init__()
        self.a = ConvBN(cin, branch, 1)
        self.b1 = ConvBN(cin, branch, 1)
        self.b_dw = ConvBN(branch, branch, 3, groups=branch)
        self.b2 = ConvBN(branch, branch, 1)
        self.fuse = ConvBN(2 * branch, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(x)
        b = self.b2(self.b_dw(self.b1(x)))
        return self.fuse(torch.cat([a, b], dim=1))


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBN(1, 32, 3)
        self.block1 = BasicBlock(32, 32, 1)
        self.block2 = BasicBlock(32, 64, 2)
        self.block3 = ConcatBlock(64, 48, 96)
        self.fc = nn.Linear(96, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.stem(x))))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


# ----------------------------------------------------------------------------------------------
# ONNX export by hand (BatchNormalization kept)


class GraphWriter:
    """Collects nodes and initializers while walking the trained modules in forward order."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def init(self, name: str, t: torch.Tensor) -> str:
        self.inits.append(numpy_helper.from_array(t.detach().cpu().numpy().astype(np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        out = f"{name}_out"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    def conv_bn(self, m: ConvBN, x: str, prefix: str) -> str:
        c = m.conv
        k = c.kernel_size[0]
        w = self.init(f"{prefix}.conv.weight", c.weight)
        y = self.node(
            "Conv", [x, w], f"{prefix}.conv",
            kernel_shape=[k, k], strides=list(c.stride), pads=[k // 2] * 4, group=c.groups, dilations=[1, 1],
        )
        bn = m.bn
        y = self.node(
            "BatchNormalization",
            [
                y,
                self.init(f"{prefix}.bn.weight", bn.weight),
                self.init(f"{prefix}.bn.bias", bn.bias),
                self.init(f"{prefix}.bn.running_mean", bn.running_mean),
                self.init(f"{prefix}.bn.running_var", bn.running_var),
            ],
            f"{prefix}.bn",
            epsilon=float(bn.eps),
            momentum=float(1.0 - bn.momentum),  # ONNX momentum is the weight of the old running value
        )
        return self.node("Relu", [y], f"{prefix}.relu") if m.relu else y

    def basic_block(self, b: BasicBlock, x: str, prefix: str) -> str:
        y = self.conv_bn(b.conv1, x, f"{prefix}.conv1")
        y = self.conv_bn(b.conv2, y, f"{prefix}.conv2")
        short = self.conv_bn(b.proj, x, f"{prefix}.proj") if b.proj is not None else x
        y = self.node("Add", [y, short], f"{prefix}.add")
        return self.node("Relu", [y], f"{prefix}.relu")

    def concat_block(self, b: ConcatBlock, x: str, prefix: str) -> str:
        a = self.conv_bn(b.a, x, f"{prefix}.a")
        y = self.conv_bn(b.b1, x, f"{prefix}.b1")
        y = self.conv_bn(b.b_dw, y, f"{prefix}.b_dw")
        y = self.conv_bn(b.b2, y, f"{prefix}.b2")
        y = self.node("Concat", [a, y], f"{prefix}.concat", axis=1)
        return self.conv_bn(b.fuse, y, f"{prefix}.fuse")


def export_onnx(model: DigitsCNN, meta: dict[str, str]) -> onnx.ModelProto:
    model.eval()
    g = GraphWriter()
    x = g.conv_bn(model.stem, "input", "stem")
    x = g.basic_block(model.block1, x, "block1")
    x = g.basic_block(model.block2, x, "block2")
    x = g.concat_block(model.block3, x, "block3")
    x = g.node("GlobalAveragePool", [x], "head.gap")
    x = g.node("Flatten", [x], "head.flatten", axis=1)
    g.nodes.append(
        helper.make_node(
            "Gemm",
            [x, g.init("fc.weight", model.fc.weight), g.init("fc.bias", model.fc.bias)],
            ["logits"],
            name="head.fc",
            transB=1,
        )
    )
    graph = helper.make_graph(
        g.nodes,
        "digits_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, IMAGE_SIZE, IMAGE_SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", NUM_CLASSES])],
        initializer=g.inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="train_digits.py")
    m.doc_string = "Small CNN trained on scikit-learn digits (UCI optical digits), see models/README.md"
    helper.set_model_props(m, meta)
    clamp_ir_version(m)
    onnx.checker.check_model(m, full_check=True)
    return m


def count_macs(model: onnx.ModelProto) -> int:
    """Multiply-accumulates of Conv and Gemm at batch 1 (BN, Add, pooling are not counted)."""
    shapes, _, _ = infer_shapes(model, {"input": [1, 1, IMAGE_SIZE, IMAGE_SIZE]})
    total = 0
    for n in model.graph.node:
        if n.op_type == "Conv":
            w = shapes[n.input[1]]  # [Cout, Cin/group, kh, kw]
            out = shapes[n.output[0]]
            total += int(np.prod(out)) * int(np.prod(w[1:]))
        elif n.op_type == "Gemm":
            w = shapes[n.input[1]]
            total += shapes[n.input[0]][0] * w[0] * w[1]
    return total


# ----------------------------------------------------------------------------------------------
# Training


def seed_everything(seed: int, threads: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def train(cfg: TrainConfig, split: Split) -> tuple[DigitsCNN, list[dict]]:
    model = DigitsCNN()
    xt = torch.from_numpy(split.x_train)
    yt = torch.from_numpy(split.y_train)
    gen = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = (len(xt) + cfg.batch_size - 1) // cfg.batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.2
    )
    history = []
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        total_loss, correct = 0.0, 0
        for i in range(0, len(xt), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            xb = random_shift(xt[idx], cfg.max_shift, gen)
            logits = model(xb)
            loss = F.cross_entropy(logits, yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item() * len(idx)
            correct += int((logits.argmax(1) == yt[idx]).sum())
        history.append(
            {"epoch": epoch + 1, "loss": round(total_loss / len(xt), 5), "train_acc": round(correct / len(xt), 5)}
        )
        print(f"epoch {epoch + 1:2d}  loss {total_loss / len(xt):.4f}  train acc {correct / len(xt):.4f}", flush=True)
    model.eval()
    return model, history


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=HERE)
    ap.add_argument("--seed", type=int, default=TrainConfig.seed)
    ap.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    args = ap.parse_args(argv)
    cfg = TrainConfig(seed=args.seed, epochs=args.epochs)
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)

    seed_everything(cfg.seed, cfg.threads)
    t0 = time.perf_counter()
    split = make_split(cfg)
    model, history = train(cfg, split)
    train_s = time.perf_counter() - t0

    onnx_model = export_onnx(model, {"dataset": "sklearn.datasets.load_digits", "seed": str(cfg.seed)})

    # The hand-written graph must compute what torch computes.
    xs = torch.from_numpy(split.x_test)
    with torch.no_grad():
        ref = model(xs).numpy()
    sess = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"input": split.x_test})[0]
    max_diff = float(np.abs(got - ref).max())
    assert max_diff < 1e-4, f"onnxruntime and torch disagree: max abs diff {max_diff}"
    single = sess.run(["logits"], {"input": split.x_test[:1]})[0]  # dynamic batch works at 1 too
    assert np.abs(single - got[:1]).max() < 1e-4

    pred = got.argmax(1)
    acc = float((pred == split.y_test).mean())
    torch_acc = float((ref.argmax(1) == split.y_test).mean())
    assert acc >= cfg.min_accuracy, f"test accuracy {acc:.4f} below {cfg.min_accuracy}"

    params = int(sum(int(np.prod(t.dims)) for t in onnx_model.graph.initializer if "running_" not in t.name))
    ops: dict[str, int] = {}
    for n in onnx_model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1

    onnx.save(onnx_model, str(out / "digits_cnn.onnx"))
    # Project data layout: one npz, leading sample axis, each sample the full model input rank.
    np.savez(out / "digits_calib.npz", input=split.x_calib[:, None])
    np.savez(out / "digits_test.npz", input=split.x_test[:, None])
    np.save(out / "digits_test_labels.npy", split.y_test.astype(np.int64))

    facts = {
        "model": "digits_cnn.onnx",
        "test_accuracy": acc,
        "test_correct": int((pred == split.y_test).sum()),
        "test_samples": len(split.y_test),
        "torch_test_accuracy": torch_acc,
        "onnx_vs_torch_max_abs_diff": max_diff,
        "macs_batch1": count_macs(onnx_model),
        "params": params,
        "params_note": "trainable parameters (BN running mean/var excluded)",
        "op_counts": dict(sorted(ops.items())),
        "opset": OPSET,
        "ir_version": onnx_model.ir_version,
        "input": {"name": "input", "shape": ["batch", 1, IMAGE_SIZE, IMAGE_SIZE], "dtype": "float32", "layout": "NCHW"},
        "output": {"name": "logits", "shape": ["batch", NUM_CLASSES], "dtype": "float32"},
        "preprocessing": "pixel/16 -> [0,1]; no mean/std normalization; bilinear upsample 8x8 -> 32x32 "
        "(torch.nn.functional.interpolate, align_corners=False); NCHW",
        "split": {
            "train": len(split.y_train),
            "calib": len(split.x_calib),
            "calib_from": "training part (seeded choice without replacement)",
            "test": len(split.y_test),
            "method": f"sklearn train_test_split(test_size={cfg.test_size}, stratify=y, random_state={cfg.seed})",
        },
        "config": asdict(cfg),
        "train_seconds": round(train_s, 1),
        "history": history,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
        },
        "dataset": "scikit-learn load_digits (copy of the UCI ML hand-written digits test set, optdigits)",
    }
    (out / "digits_cnn.json").write_text(json.dumps(facts, indent=2) + "\n")
    print(
        f"test accuracy (onnxruntime) {acc:.6f} ({facts['test_correct']}/{facts['test_samples']}), "
        f"MACs {facts['macs_batch1']:,}, params {params:,}, max |ort - torch| {max_diff:.2e}, "
        f"train {train_s:.0f}s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
