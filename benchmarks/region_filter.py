"""The region filter (personseg/regions.py) on the shipped models: sweep on the validation split, choose,
then report the chosen setting on the held-back split beside validation.

    flock /tmp/personseg-cpu.lock python benchmarks/region_filter.py            # everything (~15 min, 1 thread)
    python benchmarks/region_filter.py --models fast --folders coco,negatives --limit 10   # a quick look

1. Cache: every model predicts each folder's validation and held-back files (`personseg.evaluate.
   list_items`, the training loader's splits: val = index % 10 == 9, holdout = index % 10 == 4) and the
   low-resolution probability that `Predictor.predict` hands to `Predictor.upsample` (caught on its way,
   with the guide: `low_res`) is cached in --cache, keyed by the ONNX file's and the prediction code's hash.
2. Sweep (validation only): for each setting of the filter (stat x level x min_share x support x scope, GRID)
   the kept probability is upsampled as the predictor does (`Predictor.upsample`: the guided filter) and
   scored at the model's threshold with pooled pixel counts as `personseg eval` does: IoU per folder;
   person-free folders the share of pixels called person and the photos over 5%.
3. Choice, per model, on validation only: among the settings that pass --rule (no mask folder more
   than --tolerance IoU below the unfiltered model; "bootstrap", the default: at 95% confidence over
   paired resamples of the images, `Rule`), the lowest share called person on the person-free folders
   (ties: fewer photos over 5%, then the higher mean IoU, then the gentlest setting). The held-back split
   is scored once, with that setting.
4. Check: `personseg.evaluate.evaluate_folders` on a predictor that runs the filter inside its own
   `predict` (fresh inference, no cache) gives the figures printed as final, now and filtered, both
   splits; a warning names any that differ from the sweep's counts. The filter's own cost per image is
   timed on the cached probabilities.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import pickle
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

FOLDERS = ("portraits", "ccp", "hsd", "coco", "negatives", "pennfudan")
MODELS = ("accurate", "fast")
GRID = {"stat": ("peak", "mean", "p90"),
        "level": (0.0, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99),
        "min_share": (0.0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02),
        "support": (None, 0.3),  # None: the model's threshold
        "scope": ("region", "image")}
OVER_SHARE = 0.05  # as personseg.evaluate.OVER_SHARE


def load_split(data: Path, folders: list[str], split: str, limit: int | None) -> dict:
    """{folder: [(file, rgb (H, W, 3) uint8, person (H, W) bool, valid (H, W) bool)]}, as evaluate scores them."""
    from personseg.evaluate import list_items
    from personseg.folders import decode_mask
    from personseg.imageio import read_image

    out = {}
    for folder in folders:
        rows = []
        for path, truth in list_items(data / folder, split, limit):
            rgb = read_image(path)
            person, valid = decode_mask(truth(rgb.shape[:2])[0])
            rows.append((path.name, rgb, person > 0, valid > 0))
        out[folder] = rows
    return out


def low_res(predictor, rgb: np.ndarray) -> tuple:
    """What `predictor.predict(rgb)` hands its `upsample` (the filter goes between the two): the (h, w)
    probability and the rest of the call's arguments (the downsampled guide), caught on the way."""
    caught = []
    upsample = predictor.upsample

    def catch(image, prob, *rest):
        caught.append((prob, rest))
        return upsample(image, prob, *rest)

    predictor.upsample = catch
    try:
        predictor.predict(rgb)
    finally:
        del predictor.upsample  # the class's own method again
    return caught[0]


def code_digest(name: str) -> str:
    """The model file's and the prediction code's hash: a cache entry is reused only while both hold."""
    import personseg
    from personseg.predict import WEIGHTS_DIR

    digest = hashlib.sha256((WEIGHTS_DIR / f"{name}.onnx").read_bytes())
    for module in ("predict.py", "guided_filter.py", "onnx_backend.py", "refiner.py"):
        path = Path(personseg.__file__).parent / module
        digest.update(path.read_bytes() if path.exists() else b"")
    return digest.hexdigest()[:12]


def cached_probs(predictor, name: str, digest: str, split_data: dict, split: str, cache: Path) -> dict:
    """{folder: [`low_res` of each image]}, from --cache while the model and the code (`digest`,
    taken when the predictor was loaded) are unchanged."""
    out = {}
    for folder, rows in split_data.items():
        path = cache / f"{name}-{digest}-{split}-{folder}.pkl"
        if path.exists():
            with open(path, "rb") as f:
                stored = pickle.load(f)
            if [file for file, *_ in rows] == stored["files"]:
                out[folder] = stored["probs"]
                continue
        out[folder] = [low_res(predictor, rgb) for _, rgb, _, _ in rows]
        cache.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            pickle.dump({"files": [file for file, *_ in rows], "probs": out[folder]}, f)
    return out


def counts(alpha: np.ndarray, person: np.ndarray, valid: np.ndarray, threshold: float) -> np.ndarray:
    """[tp, fp, fn, valid pixels, pixels called person] of one image (int64)."""
    called = (alpha >= threshold) & valid
    tp = int((called & person).sum())
    return np.array([tp, int(called.sum()) - tp, int((person & valid).sum()) - tp, int(valid.sum()), int(called.sum())])


def folder_figures(rows: list[np.ndarray]) -> dict:
    """Pooled IoU, precision, recall; person-free folders: share called person and photos over 5%."""
    tp, fp, fn, valid, _ = np.sum(rows, axis=0)
    if tp + fn == 0:
        return {"person_free": True, "fp_share": fp / max(valid, 1),
                "over_5pct": int(sum(r[4] > OVER_SHARE * r[3] for r in rows)), "images": len(rows)}
    return {"iou": tp / max(tp + fp + fn, 1), "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1),
            "images": len(rows)}


class Scorer:
    """One model on one split: the images' region tables per (stat, support) and the counts of every
    distinct set of dropped regions, so each setting upsamples only images it changes, and only once."""

    def __init__(self, predictor, split_data: dict, probs: dict):
        from personseg.regions import RegionFilter

        self.predictor, self.threshold = predictor, predictor.threshold
        self.images = [(folder, row, low) for folder, rows in split_data.items()
                       for row, low in zip(rows, probs[folder])]
        self.base = [self._count(row, low) for _, row, low in self.images]
        self.tables, self.memo = {}, {}
        self.off = RegionFilter()

    def _count(self, row, low: tuple, prob: np.ndarray | None = None) -> np.ndarray:
        """The image's counts with `prob` in place of its own low-resolution probability."""
        _, rgb, person, valid = row
        own, rest = low
        return counts(self.predictor.upsample(rgb, own if prob is None else prob, *rest), person, valid, self.threshold)

    def _table(self, stat: str, support: float | None) -> list:
        from personseg.regions import region_scores

        key = (stat, support)
        if key not in self.tables:
            level = self.threshold if support is None else support
            self.tables[key] = [region_scores(low[0], level, stat) for _, _, low in self.images]
        return self.tables[key]

    def rows(self, settings) -> dict:
        """{folder: [counts of each image]} under `settings` (a RegionFilter)."""
        from personseg.regions import kept

        per_folder: dict[str, list] = {}
        table = self._table(settings.stat, settings.support) if settings.active else None
        for i, (folder, row, low) in enumerate(self.images):
            rows = per_folder.setdefault(folder, [])
            if table is None:
                rows.append(self.base[i])
                continue
            labels, areas, scores = table[i]
            drop = np.flatnonzero(~kept(areas, scores, labels.size, settings)) + 1
            if not len(drop):
                rows.append(self.base[i])
                continue
            key = (i, settings.support, tuple(drop))
            if key not in self.memo:
                self.memo[key] = self._count(row, low, np.where(np.isin(labels, drop), np.float32(0), low[0]))
            rows.append(self.memo[key])
        return per_folder

    def figures(self, settings) -> dict:
        """{folder: folder_figures} under `settings`."""
        return {folder: folder_figures(rows) for folder, rows in self.rows(settings).items()}


def pooled_iou(weights: np.ndarray, rows: list) -> np.ndarray:
    """(B,) pooled IoU of B resamples: weights (B, n) how often each of the n images is drawn."""
    tp, fp, fn = (weights @ np.asarray(rows, np.float64)[:, :3]).T
    return tp / np.maximum(tp + fp + fn, 1)


class Rule:
    """Which settings may ship: "point": no mask folder's val IoU more than `tolerance` below now;
    "bootstrap": the same at 95% confidence, i.e. the 95th percentile of the IoU lost over `draws`
    paired bootstrap resamples of each folder's images (the same resamples for every setting) at most
    `tolerance`. A filter drops whole people, so a few images swing a folder: the point rule overfits."""

    def __init__(self, kind: str, tolerance: float, base_rows: dict, draws: int = 1000):
        rng = np.random.default_rng(0)
        self.kind, self.tolerance, self.base_rows = kind, tolerance, base_rows
        self.weights = {k: rng.multinomial(len(v), np.full(len(v), 1 / len(v)), size=draws).astype(np.float64)
                        for k, v in base_rows.items()}
        self.base_iou = {k: pooled_iou(w, base_rows[k]) for k, w in self.weights.items()}

    def loss(self, folder: str, rows: list) -> float:
        """The IoU lost on `folder`: the point figure, or its bootstrap 95th percentile."""
        if self.kind == "point":
            return folder_figures(self.base_rows[folder])["iou"] - folder_figures(rows)["iou"]
        return float(np.percentile(self.base_iou[folder] - pooled_iou(self.weights[folder], rows), 95))

    def verdict(self, rows: dict) -> tuple | None:
        """The ranking key of a setting (lower is better: share called person on the person-free folders,
        photos over 5%, minus the mean IoU), or None when a mask folder may lose more than `tolerance`."""
        figs = {k: folder_figures(v) for k, v in rows.items()}
        masks = [k for k, f in figs.items() if not f.get("person_free")]
        if any(self.loss(k, rows[k]) > self.tolerance for k in masks):
            return None
        free = [f for f in figs.values() if f.get("person_free")]
        return (sum(f["fp_share"] for f in free), sum(f["over_5pct"] for f in free),
                -float(np.mean([figs[k]["iou"] for k in masks])))


def settings_grid():
    from personseg.regions import RegionFilter

    seen = set()
    for stat, level, min_share, support, scope in itertools.product(*GRID.values()):
        if level == 0 and min_share == 0:
            continue
        s = RegionFilter(level, "peak" if level == 0 else stat, min_share, support, scope)
        if s not in seen:
            seen.add(s)
            yield s


def describe(s) -> str:
    if not s.active:
        return "off"
    return (f"scope={s.scope} stat={s.stat} level={s.level:g} min_share={s.min_share:g} "
            f"support={'threshold' if s.support is None else s.support}")


def cell(f: dict) -> str:
    if f.get("person_free"):
        return f"{f['fp_share']:6.2%} / {f['over_5pct']:2d} of {f['images']}"
    return f"{f['iou']:.4f} (P {f['precision']:.3f} R {f['recall']:.3f})"


def print_table(title: str, columns: list[tuple[str, dict]]) -> None:
    print(f"\n{title}")
    print(f"{'folder':<11}" + "".join(f" | {name:<30}" for name, _ in columns))
    for folder in columns[0][1]:
        print(f"{folder:<11}" + "".join(f" | {cell(figs[folder]):<30}" for _, figs in columns))


def sweep(name: str, scorer: Scorer, rule_kind: str, tolerance: float, top: int):
    """Every setting of GRID on validation; prints the best `top` and the best of each stat; returns
    (the choice, the unfiltered figures)."""
    rule = Rule(rule_kind, tolerance, scorer.rows(scorer.off))
    ranked = []
    for s in settings_grid():
        rows = scorer.rows(s)
        key = rule.verdict(rows)
        if key is not None:
            ranked.append((key, describe(s), s, {k: folder_figures(v) for k, v in rows.items()}))
    # ties: the gentlest setting (lowest level, then smallest min_share) changes least off this split
    ranked.sort(key=lambda r: (r[0], r[2].level, r[2].min_share, GRID["stat"].index(r[2].stat), r[1]))
    print(f"\n## {name}: sweep on val, {sum(1 for _ in settings_grid())} settings, {len(ranked)} pass the {rule_kind} "
          f"rule (no mask folder loses more than {tolerance} IoU{' at 95% confidence' if rule_kind == 'bootstrap' else ''}); "
          f"best {top} (person-free share called person, photos over 5%, mean IoU of the mask folders):")
    for key, text, _, figs in ranked[:top]:
        coco = f"  coco {figs['coco']['iou']:.4f}" if "coco" in figs else ""
        print(f"  {key[0]:6.2%}  {key[1]:3d}  {-key[2]:.4f}  {text}{coco}")
    for scope, stat in itertools.product(GRID["scope"], GRID["stat"]):
        best = next((r for r in ranked if r[2].scope == scope and r[2].stat == stat and r[2].level > 0), None)
        if best:
            print(f"  best {scope} {stat}: {best[0][0]:.2%}, {best[0][1]} over 5%, mean IoU {-best[0][2]:.4f}: {best[1]}")
    best = next((r for r in ranked if r[2].level == 0), None)
    if best:
        print(f"  best by area alone: {best[0][0]:.2%}, {best[0][1]} over 5%, mean IoU {-best[0][2]:.4f}: {best[1]}")
    return (ranked[0][2] if ranked else scorer.off), scorer.figures(scorer.off)


class Filtered:
    """A shipped predictor with the region filter between its model and its `upsample`, behind the
    protocol of `evaluate_folders` (`.predict(rgb)`, `.threshold`): what Predictor will do once wired."""

    def __init__(self, predictor, settings):
        self.predictor, self.settings, self.threshold = predictor, settings, predictor.threshold

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        upsample, threshold = self.predictor.upsample, self.threshold
        self.predictor.upsample = lambda image, prob, *rest: upsample(image, self.settings(prob, threshold), *rest)
        try:
            return self.predictor.predict(rgb)
        finally:
            del self.predictor.upsample


def check(predictor, settings, data: Path, folders: list[str], split: str, limit: int | None, expected: dict) -> dict:
    """The same figures from `evaluate_folders` with fresh inference; warns where the sweep's counts differ."""
    from personseg.evaluate import evaluate_folders

    result = evaluate_folders(Filtered(predictor, settings), [data / f for f in folders], split, limit)["per_folder"]
    for folder, m in result.items():
        mine = expected[folder]
        same = (abs(m["fp_share"] - mine["fp_share"]) < 1e-6 and m["over_5pct"] == mine["over_5pct"]) \
            if m.get("person_free") else abs(m["iou"] - mine["iou"]) < 1e-6
        if not same:
            print(f"warning: {folder} {split}: evaluate_folders {cell(m)}, sweep {cell(mine)}", file=sys.stderr)
    return result


def filter_ms(scorer: Scorer, settings) -> float:
    """Median ms of the filter on the cached probabilities (the cost it adds to a prediction)."""
    times = []
    for _, _, (prob, _) in scorer.images:
        start = time.perf_counter()
        settings(prob, scorer.threshold)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def diagnose(name: str, scorer: Scorer) -> None:
    """Are false positives weak regions? The regions of the model's probability at its threshold, each
    called person when over half of it (at model resolution) is person in the truth: how well each
    statistic tells the two apart (AUROC over regions), and how much region area a level would drop."""
    import cv2
    from personseg.regions import region_scores

    regions = []  # (area share, is person, peak, mean, p90)
    for _, (_, _, person, _), (prob, _) in scorer.images:
        h, w = prob.shape
        truth = cv2.resize(person.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
        labels, areas, peak = region_scores(prob, scorer.threshold, "peak")
        on_person = np.bincount(labels.ravel(), weights=truth.ravel(), minlength=len(areas) + 1)[1:] / areas
        stats = [region_scores(prob, scorer.threshold, stat)[2] for stat in ("mean", "p90")]
        regions += list(zip(areas / prob.size, on_person > 0.5, peak, *stats))
    area, is_person, *scores = (np.array(column, np.float64) for column in zip(*regions))
    is_person = is_person.astype(bool)
    print(f"\n## {name}: regions of the val probability at threshold {scorer.threshold:g}: {is_person.sum()} "
          f"person, {(~is_person).sum()} not (area share of the pictures: {area[is_person].sum():.1f} vs "
          f"{area[~is_person].sum():.1f})")
    for stat, score in zip(("peak", "mean", "p90", "area"), (*scores, area)):
        pos, neg = score[is_person], score[~is_person]
        auroc = (pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()
        cuts = (0.85, 0.9, 0.95, 0.97, 0.99) if stat != "area" else (0.001, 0.005, 0.01, 0.02)
        dropped = "; ".join(f"< {c:g}: {area[~is_person & (score < c)].sum() / area[~is_person].sum():.0%} of the "
                            f"non-person area, {area[is_person & (score < c)].sum() / area[is_person].sum():.1%} "
                            "of the person area" for c in cuts)
        print(f"  {stat}: AUROC {auroc:.3f}; regions {dropped}")


def run_model(name: str, args, splits: dict) -> None:
    import personseg

    digest, predictor = code_digest(name), personseg.load(name, threads=args.threads)
    scorers = {split: Scorer(predictor, split_data, cached_probs(predictor, name, digest, split_data, split, args.cache))
               for split, split_data in splits.items()}
    if args.diagnose:
        return diagnose(name, scorers["val"])
    chosen, base_val = sweep(name, scorers["val"], args.rule, args.tolerance, args.top)
    print(f"\n## {name} (threshold {predictor.threshold:g}, model input {predictor.spec.size[0]}x"
          f"{predictor.spec.size[1]}, tta {predictor.tta}): chosen on val: {describe(chosen)}; filter "
          f"{filter_ms(scorers['val'], chosen):.2f} ms/image (median, low-res probability)")
    columns = []
    for split in ("val", "holdout"):
        base = base_val if split == "val" else scorers[split].figures(scorers[split].off)
        mine = scorers[split].figures(chosen)
        if args.check:
            base = check(predictor, scorers[split].off, args.data, args.folders, split, args.limit, base)
            mine = check(predictor, chosen, args.data, args.folders, split, args.limit, mine)
        columns += [(f"{split} now", base), (f"{split} filtered", mine)]
    print_table(f"{name}: IoU (precision, recall); person-free: share called person / photos over 5%"
                f"{'; filtered = evaluate_folders, fresh inference' if args.check else ''}", columns)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("PERSONSEG_DATA", "../shared/data")),
                        help="the shared data folder (default: $PERSONSEG_DATA or ../shared/data)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated (default: {','.join(MODELS)})")
    parser.add_argument("--folders", default=",".join(FOLDERS), help=f"comma-separated (default: {','.join(FOLDERS)})")
    parser.add_argument("--limit", type=int, default=0, help="at most N images per folder and split (default: 0 = all)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default: 1)")
    parser.add_argument("--tolerance", type=float, default=0.005,
                        help="the most IoU a mask folder may lose on val (default: 0.005, the issue's rule)")
    parser.add_argument("--rule", choices=["bootstrap", "point"], default="bootstrap",
                        help="which settings may ship (Rule): bootstrap (default) or point")
    parser.add_argument("--top", type=int, default=12, help="settings listed from the sweep (default: 12)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/personseg-region-filter"),
                        help="folder for the cached low-resolution probabilities (default: %(default)s)")
    parser.add_argument("--diagnose", action="store_true",
                        help="instead of the sweep: how well region statistics separate person from non-person "
                             "regions on val (diagnose)")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="skip the final evaluate_folders run (fresh inference) of the chosen setting")
    args = parser.parse_args(argv)
    args.folders = args.folders.split(",")
    missing = [f for f in args.folders if not (args.data / f / "images").is_dir()]
    if missing:
        parser.error(f"no images/ in {', '.join(str(args.data / f) for f in missing)}: pass --data (the shared data folder)")
    unknown = [m for m in args.models.split(",") if m not in MODELS]
    if unknown:
        parser.error(f"unknown model {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    print(f"# benchmarks/region_filter.py {' '.join(argv if argv is not None else sys.argv[1:])}, "
          f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, data {args.data}, ONNX threads {args.threads}")
    splits = {split: load_split(args.data, args.folders, split, args.limit or None) for split in ("val", "holdout")}
    print("# images per folder: " + "; ".join(f"{split} " + ", ".join(f"{k} {len(v)}" for k, v in d.items())
                                          for split, d in splits.items()))
    for name in args.models.split(","):
        run_model(name, args, splits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
