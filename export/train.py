"""``python -m export bundle OUT --data DATASET --method M [--method M2 ...]``: train, calibrate, export.

1. Embeddings: ``--data`` is either an embedding directory (``python -m export
   embed``) or an image dataset in UniversalFakeDetect layout, embedded on the
   fly into a cache directory (resumable) with NTF's views and the freq head's
   native crops when those methods are asked for. The embeddings' encoder
   fingerprint must match the backbone being exported.
2. Split: a seeded random 20% of every (generator, label) group is the
   validation split (:func:`export.calibrate.stratified_split`).
3. Fit every method on the training split (hyper-parameters: the paper's
   defaults, then ``--profile``, then ``--set`` overrides; all recorded).
4. Calibrate on the validation split: threshold for ``--target-fpr`` and the
   uncertain band (:mod:`export.calibrate`). Several methods make an ensemble
   whose probabilities the worker fuses in log-odds
   (:func:`worker.model.bundle.fuse_log_odds`, the same function used here), and the
   calibration is of the fused score.
5. Export backbone + heads with parity checks and write the manifest: method,
   hyper-parameters, data summary, fit summary, threshold, band, validation
   metrics.

Preprocessing: the bundle serves the mode its embeddings were made with
(``embed --preprocess clip|ufd``, recorded in their meta), so heads are always
served what they were trained on. Augmented copies (``embed --augment K``) are
added to the training split only (their source image's row decides which
split they belong to), and only for heads that read nothing but the embedding;
validation, calibration and the recorded metrics never see an augmented row.

``--save-heads DIR`` keeps every fitted head as a checkpoint
(:mod:`export.heads.checkpoint`); ``--head FILE`` loads one instead of
training it (step 3 skipped for that head; it is still calibrated and
validated on this run's validation split, so re-calibrating for another
target FPR or assembling an ensemble needs no retraining).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export import heads as head_registry
from export.calibrate import calibrate, stratified_split
from export.heads.base import EmbeddingSet, HeadMethod
from export.metrics import average_precision, roc_auc
from export.monitoring import MonitoringOptions, finalize_hook
from schemas import BundleManifest, Preprocess, PreprocessMode

#: Named sets of hyper-parameter overrides. "paper" is the papers' own values.
#: "small-data" is for datasets of a few hundred images (tests, the synthetic
#: benchmark): the papers' learning rates and epoch counts were set for
#: 720K-image training sets and barely move the weights in a few dozen steps.
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {},
    "small-data": {
        "linear-probe": {"lr": 1e-2},
        "gendet": {"lr_teacher": 1e-3, "lr_student": 1e-3, "lr_augmenter": 1e-3, "lr_classifier": 1e-3, "teacher_epochs": 20, "classifier_epochs": 20},
        "gendet-dr": {
            "lr_teacher": 1e-3,
            "lr_student": 1e-3,
            "lr_augmenter": 1e-3,
            "lr_classifier": 1e-3,
            "teacher_epochs": 20,
            "classifier_epochs": 20,
        },
        "ntf": {"stage1_epochs": 50, "stage2_epochs": 20},
        "freq": {"epochs": 15},
    },
}


def parse_set(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """``--set gendet.margin=1.5`` -> {"gendet": {"margin": 1.5}} (values parsed as JSON when they parse)."""
    import json

    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        method, dot, field = key.partition(".")
        if not sep or not dot or not field:
            raise SystemExit(f"--set takes METHOD.FIELD=VALUE (e.g. gendet.margin=1.5), got {item!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out.setdefault(method, {})[field] = value
    return out


def method_config(name: str, profile: str, overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if profile not in PROFILES:
        raise SystemExit(f"unknown --profile {profile!r}; known: {', '.join(PROFILES)}")
    return {**PROFILES[profile].get(name, {}), **overrides.get(name, {})}


def make_method(name: str, profile: str, overrides: dict[str, dict[str, Any]], seed: int) -> HeadMethod:
    cls = head_registry.get(name)
    cfg = {"seed": seed, **method_config(name, profile, overrides)}
    try:
        return cls(**cfg)
    except Exception as exc:  # pydantic's ValidationError names the bad field
        raise SystemExit(f"bad hyper-parameters for {name}: {exc}") from None


@dataclass
class TrainingData:
    data: EmbeddingSet
    meta: dict[str, Any]
    source: Path
    embeddings_dir: Path


def _cache_dir(
    root: Path, dataset: Path, arch: str, pretrained: str | None, seed: int, views: bool, native: int | None, mode: str, augment: int, draft: bool
) -> Path:
    fields = f"{dataset.resolve()}|{arch}|{pretrained}|{seed}|{views}|{native}|{mode}|{augment}" + ("|draft" if draft else "")
    key = hashlib.sha256(fields.encode()).hexdigest()[:16]
    return root / f"{dataset.name}-{arch}-{key}"


def with_augmented(train: EmbeddingSet, augmented: np.ndarray) -> EmbeddingSet:
    """``train`` plus its K augmented copies per row (same label and generator; no views, no native crops)."""
    n, k, d = augmented.shape
    if n != len(train):
        raise ValueError(f"{n} augmented rows for {len(train)} training rows")
    views = None
    if train.views is not None:
        views = np.concatenate([train.views, np.full((n * k, *train.views.shape[1:]), np.nan, dtype=np.float32)])
    return EmbeddingSet(
        embeddings=np.concatenate([train.embeddings, augmented.reshape(n * k, d)]),
        labels=np.concatenate([train.labels, np.repeat(train.labels, k)]),
        generators=[*train.generators, *(g for g in train.generators for _ in range(k))],
        paths=[*train.paths, *(f"{p}#augment{j}" for p in train.paths for j in range(k))] if train.paths else [],
        views=views,
        native=None,
    )


def load_training_data(
    data: Path,
    *,
    arch: str,
    pretrained: str | None,
    seed: int,
    views: bool,
    native_crop: int | None,
    cache_root: Path,
    embeddings_dir: Path | None,
    progress: bool,
    random_weights: bool = False,
    assume_openai: bool | None = None,
    preprocess_mode: PreprocessMode = "clip",
    allow_draft: bool = False,
    augment: int = 0,
) -> TrainingData:
    """Embeddings for ``data`` (an embedding directory as is, or an image dataset embedded into the cache)."""
    from export.embed import EmbedOptions, embed_dataset, is_embedding_dir, load_embeddings

    if is_embedding_dir(data):
        ds, meta = load_embeddings(data)
        return TrainingData(ds, meta, data, data)
    out = embeddings_dir or _cache_dir(cache_root, data, arch, pretrained, seed, views, native_crop, preprocess_mode, augment, allow_draft)
    opts = EmbedOptions(
        arch=arch,
        pretrained=pretrained,
        seed=seed,
        random_weights=random_weights,
        assume_openai=assume_openai,
        preprocess=preprocess_mode,
        allow_draft=allow_draft,
        augment=augment,
        views=views,
        native_crop=native_crop,
    )
    embed_dataset(data, out, opts, progress=progress)
    ds, meta = load_embeddings(out)
    return TrainingData(ds, meta, data, out)


def _counts(data: EmbeddingSet) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for g, y in zip(data.generators, data.labels.tolist(), strict=True):
        row = out.setdefault(g, {"real": 0, "fake": 0})
        row["fake" if y else "real"] += 1
    return dict(sorted(out.items()))


def train_bundle(
    out: Path,
    *,
    data: Path,
    methods: list[str],
    arch: str | None,
    pretrained: str | None,
    seed: int = 0,
    profile: str = "paper",
    overrides: dict[str, dict[str, Any]] | None = None,
    target_fpr: float = 0.01,
    band_factor: float = 5.0,
    val_fraction: float = 0.2,
    include_generators: list[str] | None = None,
    exclude_generators: list[str] | None = None,
    cache_root: Path = Path(".aigis/embeddings"),
    embeddings_dir: Path | None = None,
    name: str = "aigis",
    version: str = "0.1.0",
    progress: bool = True,
    save_heads: Path | None = None,
    load_heads: list[Path] | None = None,
    monitoring: MonitoringOptions | None = None,
    random_weights: bool = False,
    assume_openai: bool | None = None,
    preprocess_mode: PreprocessMode | None = None,
    allow_draft: bool | None = None,
    augment: int | None = None,
) -> BundleManifest:
    from export.bundle import HeadSpec, write_bundle
    from export.clip import DEFAULT_ARCH, load_encoder
    from export.embed import encoder_fingerprint, is_embedding_dir, load_augmented
    from export.heads.checkpoint import load_head, save_head
    from worker.model.bundle import fuse_log_odds

    overrides = overrides or {}
    unknown = sorted(set(overrides) - set(head_registry.names()))
    if unknown:
        raise SystemExit(f"--set names unknown methods {unknown}; known: {', '.join(head_registry.names())}")
    built = [make_method(m, profile, overrides, seed) for m in methods]
    loaded = {path: load_head(path) for path in load_heads or []}
    if not built and not loaded:
        raise SystemExit("nothing to put in the bundle: give --method or --head")
    needs_views = any(m.name == "ntf" for m in built)  # views are for training only; a loaded NTF head needs none
    crops = [m.crop_size for m in [*built, *loaded.values()] if "native_crop" in m.inputs and m.crop_size]
    if len(set(crops)) > 1:
        raise SystemExit(f"freq heads in one bundle must share a crop size (the worker feeds one native crop), got {sorted(set(crops))}")
    native = crops[0] if crops else None

    if is_embedding_dir(data):
        import json

        meta = json.loads((Path(data) / "meta.json").read_text())
        arch = arch or meta["arch"]
        asked = (arch, pretrained, seed if pretrained is None else None)
        made = (meta["arch"], meta["pretrained"], meta["seed"] if meta["pretrained"] is None else None)
        if asked != made:
            raise SystemExit(
                f"{data} was embedded with arch={meta['arch']} pretrained={meta['pretrained']} seed={meta['seed']}; "
                f"this bundle asks for arch={arch} pretrained={pretrained} seed={seed}"
            )
        made_mode = meta.get("preprocess", {}).get("mode", "clip")
        if preprocess_mode is not None and preprocess_mode != made_mode:
            raise SystemExit(f"{data} was embedded with --preprocess {made_mode}; a bundle serves the mode its heads were trained on, not {preprocess_mode}")
        preprocess_mode = made_mode
        made_draft = bool(meta.get("preprocess", {}).get("allow_draft", False))
        if allow_draft is not None and allow_draft != made_draft:
            raise SystemExit(f"{data} was embedded {'with' if made_draft else 'without'} --allow-draft; a bundle serves the pixels its heads were trained on")
        allow_draft = made_draft
        if augment is not None and augment != int(meta.get("augment") or 0):
            raise SystemExit(f"{data} holds {meta.get('augment') or 0} augmented copies per image; --augment applies when embedding (python -m export embed)")
    arch = arch or DEFAULT_ARCH
    preprocess_mode = preprocess_mode or "clip"
    allow_draft = bool(allow_draft)
    encoder, preprocess, dim = load_encoder(
        arch, pretrained, seed=seed, random_weights=random_weights, assume_openai=assume_openai, preprocess_mode=preprocess_mode, allow_draft=allow_draft
    )
    td = load_training_data(
        data,
        arch=arch,
        pretrained=pretrained,
        seed=seed,
        views=needs_views,
        native_crop=native,
        cache_root=cache_root,
        embeddings_dir=embeddings_dir,
        progress=progress,
        random_weights=random_weights,
        assume_openai=assume_openai,
        preprocess_mode=preprocess_mode,
        allow_draft=allow_draft,
        augment=augment or 0,
    )
    if "preprocess" in td.meta and Preprocess.model_validate(td.meta["preprocess"]) != preprocess:
        raise SystemExit(f"embeddings in {td.embeddings_dir} were preprocessed as {td.meta['preprocess']}, the encoder expects {preprocess.model_dump()}")
    fingerprint = encoder_fingerprint(encoder)
    if td.meta["encoder_sha256"] != fingerprint:
        raise SystemExit(f"embeddings in {td.embeddings_dir} come from different encoder weights than {arch} ({pretrained or 'random, seed ' + str(seed)})")
    for path, head in loaded.items():
        head_mode = head.context.get("preprocess_mode", "clip")
        if head_mode != preprocess.mode:
            raise SystemExit(
                f"head checkpoint {path} was trained on {head_mode} preprocessing; these embeddings ({td.embeddings_dir}) use {preprocess.mode}: "
                f"embed the data with --preprocess {head_mode}"
            )
        if head.context["encoder_sha256"] != fingerprint or head.context["embed_dim"] != dim:
            raise SystemExit(
                f"head checkpoint {path} was trained on embeddings of another encoder "
                f"({head.context.get('arch')}, {head.context.get('pretrained') or 'random weights'}, {head.context['embed_dim']}-d) "
                f"than this bundle's {arch} ({pretrained or 'random, seed ' + str(seed)}, {dim}-d)"
            )

    ds = td.data
    present = set(ds.generators)
    keep = set(include_generators) if include_generators else set(present)
    missing = sorted(keep - present) + sorted(set(exclude_generators or []) - present)
    if missing:
        raise SystemExit(f"generators {missing} are not in {data}; present: {sorted(present)}")
    keep -= set(exclude_generators or [])
    rows = [i for i, g in enumerate(ds.generators) if g in keep]
    ds = ds.subset(rows)
    tr_idx, va_idx = stratified_split(ds.generators, ds.labels, val_fraction, seed)
    train, val = ds.subset(tr_idx), ds.subset(va_idx)
    augmented = load_augmented(td.embeddings_dir, train)
    train_aug = with_augmented(train, augmented) if augmented is not None else train
    n_aug = 0 if augmented is None else int(augmented.shape[1])
    data_summary = {
        "source": str(td.source),
        "embeddings": str(td.embeddings_dir),
        "generators": sorted(keep),
        "excluded_generators": sorted(set(exclude_generators or [])),
        "split": f"stratified by generator and label, validation fraction {val_fraction}, seed {seed}",
        "train": _counts(train),
        "validation": _counts(val),
        "preprocess": preprocess.mode,
        "augmented_copies_per_training_image": n_aug,
    }

    specs: list[HeadSpec] = []
    notes_loaded: list[str] = []
    val_probs: list[np.ndarray] = []
    per_head: dict[str, dict[str, Any]] = {}
    names_used: dict[str, int] = {}
    context = {
        "encoder_sha256": fingerprint,
        "embed_dim": dim,
        "arch": arch,
        "pretrained": pretrained,
        "weights": encoder.weights.model_dump(mode="json"),
        "activation": encoder.activation,
        "preprocess_mode": preprocess.mode,
        "profile": profile,
        "data": data_summary,
    }
    for method in [*built, *loaded.values()]:
        names_used[method.name] = names_used.get(method.name, 0) + 1
        head_name = method.name if names_used[method.name] == 1 else f"{method.name}-{names_used[method.name]}"
        source = next((path for path, head in loaded.items() if head is method), None)
        if source is None:
            fit_on = train_aug if tuple(method.inputs) == ("embedding",) and method.fits_augmented else train
            if progress:
                extra = f", {len(fit_on) - len(train)} of them augmented copies" if len(fit_on) > len(train) else ""
                n_real, n_fake = int((train.labels == 0).sum()), int((train.labels == 1).sum())
                print(f"[bundle] fitting {head_name} on {len(fit_on)} embeddings ({n_real} real, {n_fake} fake images{extra})")
            report = method.fit(fit_on, val, progress=progress)
            if n_aug and fit_on is train:
                why = (
                    "its paper's bank is the training images themselves"
                    if not method.fits_augmented
                    else "it reads native pixels, which --augment does not store"
                )
                report.notes.append(f"{head_name} was fitted on the {len(train)} unaugmented rows only: {why}")
            if save_heads is not None:
                saved = save_head(method, report, save_heads / f"{head_name}.pt", context)
                if progress:
                    print(f"[bundle] saved fitted {head_name} to {saved}")
            head_profile, head_data = profile, data_summary
        else:
            report = method.fit_report  # type: ignore[attr-defined]
            head_profile, head_data = method.context["profile"], method.context["data"]  # type: ignore[attr-defined]
            if progress:
                print(f"[bundle] loaded fitted {head_name} from {source} (not retrained)")
            if method.context.get("imported"):  # type: ignore[attr-defined]
                notes_loaded.append(
                    f"{head_name} is a published detector imported from {source} ({method.context['imported']}); "  # type: ignore[attr-defined]
                    f"it is calibrated here on {data_summary['embeddings']}'s validation split"
                )
            elif (head_data["embeddings"], head_data["split"]) != (data_summary["embeddings"], data_summary["split"]):
                notes_loaded.append(
                    f"{head_name} was loaded from {source}, trained on {head_data['embeddings']} ({head_data['split']}); "
                    f"it is validated and calibrated here on {data_summary['embeddings']}: make sure those images were not in its training set"
                )
        p = method.predict_proba(val)
        val_probs.append(p)
        per_head[head_name] = {"roc_auc": roc_auc(p, val.labels), "average_precision": average_precision(p, val.labels)}
        training = {
            "profile": head_profile,
            "data": head_data,
            "fit": {"epochs": report.epochs, "final_loss": report.final_loss, "notes": report.notes, "history_tail": report.history[-5:]},
            "validation": per_head[head_name],
        }
        if source is not None:
            training["loaded_from"] = str(source)
            training["calibration_data"] = data_summary
        specs.append(HeadSpec(head_name, method, training))

    fused = val_probs[0] if len(val_probs) == 1 else fuse_log_odds(val_probs, [s.weight for s in specs])
    cal, cal_notes = calibrate(fused, val.labels, target_fpr, band_factor)
    metrics = {"validation": cal.validation, "validation_per_head": per_head, "data": data_summary}
    notes = [*cal_notes, *notes_loaded]
    if len(specs) > 1:
        notes.append(f"ensemble of {len(specs)} heads fused as the weighted mean of log-odds; the calibration is of the fused score")
    manifest = write_bundle(
        out,
        encoder=encoder,
        preprocess=preprocess,
        embed_dim=dim,
        architecture=arch,
        pretrained=pretrained,
        heads=specs,
        calibration=cal,
        name=name,
        version=version,
        metrics=metrics,
        notes=notes,
        # drift reference + attribution head (export/monitoring.py), unless both are switched off
        finalize=finalize_hook(train, val, monitoring or MonitoringOptions(seed=seed, progress=progress)),
    )
    return manifest


__all__ = ["PROFILES", "parse_set", "train_bundle"]
