"""GenDet: adversarial teacher-student discrepancy-aware detection (Zhu et al. 2023; seed 001).

Training, on frozen CLIP embeddings x (standardised with training statistics):

0. teacher N_t: a binary classifier (cross-entropy), then frozen ("the feature
   extractor and the teacher network are fixed after pretraining");
1. three stages rotating, one epoch each, ``rotations`` times (AdamW):
   (a) student N_s on real features with L_dis^r (eq. 1);
   (b) student on augmented fakes G(x^f) with alpha * L_dis^f, the margin loss (eq. 2; M = 2.0, alpha = 0.1);
   (c) feature augmenter G on fakes, minimising the teacher-student discrepancy (eq. 3);
2. classifier N_c on D = (z_t - z_s)^2 (eq. 4) of real and (un-augmented) fake
   features; inference is Y = N_c((N_t(x) - N_s(x))^2) (eq. 5).

Networks (paper's implementation details): N_t, N_s and G are one transformer
block each (1 layer, 4 heads, FFN x4, width 196); N_c is a transformer block and
a fully connected layer. How the feature vector becomes tokens is in
:class:`~export.heads.blocks.VectorTransformer`. The teacher's output z_t is the
block's token features (T x 196); its binary-classification layer (token mean
-> linear) exists only to pretrain it. G maps the feature back to the feature
space: x + W(block(tokens(x))) with W initialised to zero, so G starts as the
identity (an un-augmented fake) and learns its perturbation adversarially.

Learning rates are the paper's UniversalFakeDetect column: teacher 1e-5,
student 1e-4, classifier 1e-5; the optimiser is AdamW, as in the paper. Not in
the paper, so chosen here and configurable: G's rate (1e-4, the student's, as
its adversary), epochs of the teacher and of the classifier (10 each), batch
size (64), binary classifiers as one logit with BCE (equivalent to two-way
softmax CE). The student's stages (a) and (b) share one AdamW state, so alpha
scales the fake-stage gradient relative to the real-stage one as in a joint
loss (with separate Adam states a constant factor would be normalised away).

Three more training choices are ours, not the paper's (which names only AdamW
and the rates), each for a reason:

* **Class-balanced BCE** for the teacher and the classifier N_c:
  ``pos_weight = n_real / n_fake`` (:func:`~export.heads.blocks.balanced_class_weight`).
  UniversalFakeDetect's ProGAN set is balanced, where it is 1.0 and changes
  nothing; our training splits (leave-one-generator-out, several generators
  against one real pool) are not, and an unweighted BCE would tilt both
  classifiers toward the majority class.
* **Best-epoch restore**: with a validation split, the teacher and N_c keep
  the weights of their lowest validation loss (class-balanced BCE) over their
  epochs, not the last epoch's; the paper reports no validation or early
  stopping. The student and G, trained adversarially against each other, keep
  their last rotation (a validation loss of one player says little about the
  pair).
* **Weight decay 0.01** on every AdamW (teacher, student, G, N_c, and
  GenDet-DR's autoencoder): the paper gives none, so this is PyTorch's AdamW
  default, the value the paper's "AdamW" runs with unless it says otherwise.

Outputs: ``probability`` and the raw ``discrepancy`` mean(D) per image, an
anomaly score independent of N_c that is worth monitoring for drift.
"""

from __future__ import annotations

import copy
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from export.heads.base import EmbeddingSet, FitReport, HeadConfig, HeadMethod
from export.heads.blocks import Standardize, TransformerBlock, VectorTransformer, balanced_class_weight, minibatches, require_both_classes
from export.heads.losses import augmenter_loss, discrepancy, margin_fake_loss, student_real_loss

M = TypeVar("M", bound=nn.Module)


class GenDetConfig(HeadConfig):
    tokens: int = 4
    width: int = 196
    heads: int = 4
    ffn_ratio: int = 4
    margin: float = 2.0
    alpha: float = 0.1
    rotations: int = 10
    lr_teacher: float = 1e-5
    lr_student: float = 1e-4
    lr_augmenter: float = 1e-4
    lr_classifier: float = 1e-5
    teacher_epochs: int = 10
    classifier_epochs: int = 10
    weight_decay: float = 0.01
    batch_size: int = 64


class Augmenter(nn.Module):
    """G: feature -> feature, x + W(block(tokens(x))), starting as the identity."""

    def __init__(self, dim: int, cfg: GenDetConfig) -> None:
        super().__init__()
        self.body = VectorTransformer(dim, cfg.tokens, cfg.width, cfg.heads, cfg.ffn_ratio)
        self.out = nn.Linear(cfg.tokens * cfg.width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.out(self.body(x).flatten(1))


class TokenClassifier(nn.Module):
    """Token features (N, T, W) -> one logit: optional transformer block, mean over tokens, LayerNorm, linear."""

    def __init__(self, width: int, heads: int, ffn_ratio: int, with_block: bool = True) -> None:
        super().__init__()
        self.block = TransformerBlock(width, heads, ffn_ratio) if with_block else nn.Identity()
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(self.block(tokens).mean(dim=1))).squeeze(-1)


class GenDetGraph(nn.Module):
    """Inference: prefix (standardisation, or DR's encoder) -> D = (N_t(x) - N_s(x))^2 -> N_c."""

    def __init__(self, prefix: nn.Module, teacher: nn.Module, student: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.prefix, self.teacher, self.student, self.classifier = prefix, teacher, student, classifier

    def forward(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.prefix(embedding)
        d = discrepancy(self.teacher(x), self.student(x))
        return torch.sigmoid(self.classifier(d)), d.mean(dim=(1, 2))


def _frozen(module: M) -> M:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _bce_epochs(
    forward: nn.Module,
    params: list[nn.Parameter],
    x: torch.Tensor,
    y: torch.Tensor,
    lr: float,
    epochs: int,
    cfg: GenDetConfig,
    gen: torch.Generator,
    val: tuple[torch.Tensor, torch.Tensor] | None,
    tag: str,
    history: list[dict[str, Any]],
) -> float:
    """Train ``forward`` (x -> logit) with class-balanced BCE; keep the best validation epoch when given."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=balanced_class_weight(y.numpy()))
    best, best_state = float("inf"), None
    last = float("nan")
    for epoch in range(1, epochs + 1):
        forward.train()
        total = 0.0
        for idx in minibatches(len(x), cfg.batch_size, gen):
            loss = loss_fn(forward(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        last = total / len(x)
        row: dict[str, Any] = {"stage": tag, "epoch": epoch, "train_loss": last}
        if val is not None:
            forward.eval()
            with torch.no_grad():
                row["val_loss"] = float(loss_fn(forward(val[0]), val[1]))
            if row["val_loss"] < best:
                best, best_state = row["val_loss"], copy.deepcopy(forward.state_dict())
        history.append(row)
    if best_state is not None:
        forward.load_state_dict(best_state)
        return best
    return last


class _TeacherClassifier(nn.Module):
    def __init__(self, body: VectorTransformer, head: TokenClassifier) -> None:
        super().__init__()
        self.body, self.head = body, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class _OnDiscrepancy(nn.Module):
    def __init__(self, teacher: nn.Module, student: nn.Module, classifier: TokenClassifier) -> None:
        super().__init__()
        self.teacher, self.student, self.classifier = teacher, student, classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            d = discrepancy(self.teacher(x), self.student(x))
        return self.classifier(d)


def train_gendet(
    x: np.ndarray,
    y: np.ndarray,
    val: tuple[np.ndarray, np.ndarray] | None,
    cfg: GenDetConfig,
    progress: bool = False,
) -> tuple[nn.Module, nn.Module, nn.Module, list[dict[str, Any]]]:
    """The GenDet procedure on (already standardised / reduced) features; returns teacher, student, classifier, history."""
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    dim = x.shape[1]
    xt, yt = torch.from_numpy(np.asarray(x, np.float32)), torch.from_numpy(np.asarray(y, np.float32))
    vt = None if val is None or len(val[0]) == 0 else (torch.from_numpy(np.asarray(val[0], np.float32)), torch.from_numpy(np.asarray(val[1], np.float32)))
    history: list[dict[str, Any]] = []

    # 0. teacher: binary classifier, then frozen
    teacher = VectorTransformer(dim, cfg.tokens, cfg.width, cfg.heads, cfg.ffn_ratio)
    t_cls = _TeacherClassifier(teacher, TokenClassifier(cfg.width, cfg.heads, cfg.ffn_ratio, with_block=False))
    _bce_epochs(t_cls, list(t_cls.parameters()), xt, yt, cfg.lr_teacher, cfg.teacher_epochs, cfg, gen, vt, "teacher", history)
    teacher = _frozen(teacher)

    # 1. student and augmenter, three stages rotating
    student = VectorTransformer(dim, cfg.tokens, cfg.width, cfg.heads, cfg.ffn_ratio)
    augmenter = Augmenter(dim, cfg)
    opt_s = torch.optim.AdamW(student.parameters(), lr=cfg.lr_student, weight_decay=cfg.weight_decay)
    opt_g = torch.optim.AdamW(augmenter.parameters(), lr=cfg.lr_augmenter, weight_decay=cfg.weight_decay)
    real, fake = xt[yt == 0], xt[yt == 1]
    for rotation in tqdm(range(1, cfg.rotations + 1), desc="gendet rotations", disable=not progress):
        student.train()
        augmenter.eval()
        sums = {"real": 0.0, "fake": 0.0, "augmenter": 0.0}
        for idx in minibatches(len(real), cfg.batch_size, gen):  # (a) L_dis^r on real
            loss = student_real_loss(teacher(real[idx]), student(real[idx]))
            opt_s.zero_grad()
            loss.backward()
            opt_s.step()
            sums["real"] += loss.item() * len(idx)
        for idx in minibatches(len(fake), cfg.batch_size, gen):  # (b) alpha * L_dis^f on G(x^f), G fixed
            with torch.no_grad():
                xg = augmenter(fake[idx])
            loss = cfg.alpha * margin_fake_loss(teacher(xg), student(xg), cfg.margin)
            opt_s.zero_grad()
            loss.backward()
            opt_s.step()
            sums["fake"] += loss.item() * len(idx)
        student.eval()
        augmenter.train()
        for p in student.parameters():
            p.requires_grad_(False)
        for idx in minibatches(len(fake), cfg.batch_size, gen):  # (c) G minimises the fake discrepancy
            xg = augmenter(fake[idx])
            loss = augmenter_loss(teacher(xg), student(xg))
            opt_g.zero_grad()
            loss.backward()
            opt_g.step()
            sums["augmenter"] += loss.item() * len(idx)
        for p in student.parameters():
            p.requires_grad_(True)
        history.append(
            {
                "stage": "rotation",
                "epoch": rotation,
                "student_real_loss": sums["real"] / max(1, len(real)),
                "student_fake_loss": sums["fake"] / max(1, len(fake)),
                "augmenter_loss": sums["augmenter"] / max(1, len(fake)),
            }
        )
    student = _frozen(student)

    # 2. classifier N_c on D = (z_t - z_s)^2
    classifier = TokenClassifier(cfg.width, cfg.heads, cfg.ffn_ratio, with_block=True)
    on_d = _OnDiscrepancy(teacher, student, classifier)
    _bce_epochs(on_d, list(classifier.parameters()), xt, yt, cfg.lr_classifier, cfg.classifier_epochs, cfg, gen, vt, "classifier", history)
    return teacher, student, classifier.eval(), history


class GenDet(HeadMethod):
    name = "gendet"
    paper = "Zhu et al., GenDet: Towards Good Generalizations for AI-Generated Image Detection (2023), seed 001"
    Config = GenDetConfig
    anomaly_outputs = ("discrepancy",)
    config: GenDetConfig

    def __init__(self, config: GenDetConfig | None = None, **kw: Any) -> None:
        super().__init__(config, **kw)
        self.graph: GenDetGraph | None = None

    def _prefix(self, train: EmbeddingSet, val: EmbeddingSet | None, progress: bool) -> tuple[nn.Module, list[dict[str, Any]], list[str]]:
        """The module mapping embeddings to GenDet's input features (here: standardisation)."""
        return Standardize(train.dim).fit(train.embeddings).eval(), [], []

    def fit(self, train: EmbeddingSet, val: EmbeddingSet | None = None, progress: bool = False) -> FitReport:
        require_both_classes(train.labels, self.name)
        torch.manual_seed(self.config.seed)
        prefix, history, notes = self._prefix(train, val, progress)
        with torch.no_grad():
            x = prefix(torch.from_numpy(train.embeddings)).numpy()
            v = None if val is None or not len(val) else (prefix(torch.from_numpy(val.embeddings)).numpy(), val.labels)
        teacher, student, classifier, hist = train_gendet(x, train.labels, v, self.config, progress)
        self.graph = GenDetGraph(_frozen(prefix), teacher, student, classifier).eval()
        history = history + hist
        final = [h for h in hist if h["stage"] == "classifier"]
        loss = final[-1].get("val_loss", final[-1]["train_loss"]) if final else float("nan")
        return FitReport(epochs=self.config.rotations, final_loss=float(loss), history=history, notes=notes)

    def inference_module(self) -> nn.Module:
        if self.graph is None:
            raise RuntimeError(f"{self.name} is not fitted")
        return self.graph.eval()
