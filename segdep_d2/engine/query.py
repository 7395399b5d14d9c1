"""Asking a model about one image: referring queries ("the nearest car") and open-vocabulary class names,
answered from features computed once per image (``tools/query.py`` is the command line over this).

* :class:`ImageQueries`: one image encoded once (:meth:`SegDep.encode_image`: backbone, FPN, closed-set and
  depth heads); :meth:`~ImageQueries.ask` answers sentences with :meth:`SegDep.answer` and
  :meth:`~ImageQueries.classes` scores class names with the open-vocabulary head, neither running the
  backbone again. Every answer is kept for the overlays and ``answers.json``.
* :func:`format_answer` / :func:`format_class_answer`: the printed lines,
  ``"the nearest car: 1830 px, 12.4 m away, score 0.91"`` (``"the nearest car: not found (score 0.12)"``
  for an empty mask) and ``"car: 1830 px, 12.4 m away"`` (median distance over the class's region).
* :func:`answer_json` / :func:`class_json`: the same answers as JSON-safe dicts (NaN -> null, no masks).
* :func:`draw_query_overlay` / :func:`draw_class_overlay`: the image with each query's mask (each
  class's region) filled and outlined in its own colour, numbered, over a legend of the answer lines.
* :func:`interactive`: the question loop of ``tools/query.py --interactive`` (see :data:`INTERACTIVE_HELP`).
* :func:`check_queryable`: a clear error for a model that cannot answer what is asked.
"""
import math
from collections.abc import Mapping
from typing import Callable, Iterable, List, Optional, Sequence

import cv2
import numpy as np
import torch
from detectron2.data.catalog import Metadata
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils.colormap import colormap

from ..utils.visualizer import SEGMENT_EDGE_COLOR, DepthPanopticVisualizer, segment_label
from ..modeling.meta_arch import model_outputs
from .inference import _read_image_bgr
from .trainer import answers_referring_queries

__all__ = [
    "INTERACTIVE_HELP",
    "ImageQueries",
    "answer_json",
    "check_queryable",
    "class_json",
    "draw_class_overlay",
    "draw_query_overlay",
    "format_answer",
    "format_class_answer",
    "interactive",
    "parse_class_names",
    "query_color",
    "read_image",
]

INTERACTIVE_HELP = (
    "one query per line; an empty line or ':next' moves to the next image, ':classes a,b,c' asks for class "
    "names, ':help' shows this, ':quit' or end of input (Ctrl-D) ends the session"
)
_PALETTE = colormap(rgb=True, maximum=255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Checks and inputs
# ---------------------------------------------------------------------------------------------
def check_queryable(cfg, *, texts=False, classes=False):
    """Raise ``ValueError`` when ``cfg.MODEL.META_ARCHITECTURE`` cannot answer what is asked: ``texts``
    (referring queries, :func:`segdep_d2.engine.trainer.answers_referring_queries`) or ``classes``
    (open-vocabulary class names: ``"open_vocab_seg"`` among its outputs)."""
    arch = cfg.MODEL.META_ARCHITECTURE
    META_ARCH_REGISTRY.get(arch)  # an unknown name fails here with detectron2's message
    if texts and not answers_referring_queries(cfg):
        raise ValueError(f"--text needs a model with a referring head: {arch}")
    if classes and "open_vocab_seg" not in model_outputs(cfg):
        raise ValueError(f"--classes needs a model with an open-vocabulary head: {arch}")
    if (texts or classes) and not callable(getattr(META_ARCH_REGISTRY.get(arch), "encode_image", None)):
        raise ValueError(f"querying needs a model that encodes an image once (encode_image): {arch}")


def parse_class_names(text: str) -> List[str]:
    """``"car, truck,road"`` -> ``["car", "truck", "road"]`` (empty items dropped)."""
    return [name.strip() for name in str(text).split(",") if name.strip()]


def read_image(path):
    """(H, W, 3) uint8 BGR image (EXIF orientation applied); :class:`BadInputError` naming the path when
    it cannot be decoded."""
    return _read_image_bgr(path)


# ---------------------------------------------------------------------------------------------
# Answers as text and JSON
# ---------------------------------------------------------------------------------------------
def _finite(value) -> Optional[float]:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def format_answer(answer: Mapping) -> str:
    """The printed line of one referring answer (``SegDep.answer``'s dict):
    ``"the nearest car: 1830 px, 12.4 m away, score 0.91"``; ``"the nearest car: not found (score 0.12)"``
    for an empty mask; ``"...: 1830 px, score 0.91"`` when the depth over the mask is not finite."""
    text, area, score = str(answer["text"]), int(answer.get("area", 0)), float(answer.get("score", math.nan))
    if area <= 0:
        return f"{text}: not found (score {score:.2f})"
    distance = _finite(answer.get("depth_median"))
    where = f", {distance:.1f} m away" if distance is not None else ""
    return f"{text}: {area} px{where}, score {score:.2f}"


def format_class_answer(answer: Mapping) -> str:
    """The printed line of one class name (:meth:`ImageQueries.classes`' dict): ``"car: 1830 px, 12.4 m
    away"`` (area of the name's open-vocabulary region, median distance over it), ``"sky: 5200 px, no
    distance"`` for a region without a valid depth (a class without depth, a median outside the dataset's
    range), ``"bicycle: not found"`` for a name that wins no pixel."""
    name = str(answer["name"])
    if not answer.get("found"):
        return f"{name}: not found"
    distance = _finite(answer.get("depth_median")) if answer.get("depth_valid", True) else None
    where = f", {distance:.1f} m away" if distance is not None else ", no distance"
    return f"{name}: {int(answer['area'])} px{where}"


def answer_json(answer: Mapping) -> dict:
    """A referring answer without its mask, NaN as None, with its printed ``line``."""
    return {
        "text": str(answer["text"]),
        "found": int(answer.get("area", 0)) > 0,
        "area": int(answer.get("area", 0)),
        "score": _finite(answer.get("score")),
        "depth_median": _finite(answer.get("depth_median")),
        "depth_mean": _finite(answer.get("depth_mean")),
        "line": format_answer(answer),
    }


def class_json(answer: Mapping) -> dict:
    """A class answer, NaN as None, with its printed ``line``."""
    return {
        "name": str(answer["name"]),
        "found": bool(answer.get("found")),
        "area": int(answer.get("area", 0)),
        "depth_median": _finite(answer.get("depth_median")),
        "depth_mean": _finite(answer.get("depth_mean")),
        "depth_valid": bool(answer.get("depth_valid", False)),
        "line": format_class_answer(answer),
    }


# ---------------------------------------------------------------------------------------------
# One image, many questions
# ---------------------------------------------------------------------------------------------
class ImageQueries:
    """One image encoded once, then any number of questions about it.

    ``ImageQueries(model, model_input)`` runs ``model.encode_image([model_input])`` (the backbone's only
    run for this image); :meth:`ask` and :meth:`classes` reuse the encoding. ``model_input`` is the dict
    the model takes (``image``, ``height`` / ``width`` of the original image: answers come back at that
    size), e.g. :meth:`segdep_d2.engine.inference.Predictor.model_input`.
    """

    def __init__(self, model, model_input: dict):
        self.model = model
        self.input = dict(model_input)
        with torch.no_grad():
            self.encoding = model.encode_image([self.input])
        self.answers: List[dict] = []  # referring answers so far, masks included
        self.class_answers: List[dict] = []  # the last classes() call's answers
        self.class_labels = None  # (H, W) int64: the index into class_names winning each pixel
        self.class_names: List[str] = []

    def ask(self, texts: Sequence[str]) -> List[dict]:
        """Answers to ``texts`` (``SegDep.answer``'s dicts: text, mask, score, area, depth_median,
        depth_mean), in order; kept in :attr:`answers`."""
        texts = [str(t) for t in texts]
        if not texts:
            return []
        with torch.no_grad():
            answers = self.model.answer(self.encoding, [texts])[0]
        self.answers.extend(answers)
        return answers

    def classes(self, names: Sequence[str]) -> List[dict]:
        """One answer per name, in order: ``{name, found, area, depth_median, depth_mean, depth_valid}``
        over the pixels where the name wins the open-vocabulary argmax among ``names`` (SegDep's
        ``open_vocab_segments``). Replaces :attr:`class_answers` / :attr:`class_labels`."""
        names = [str(n) for n in names]
        if not names:
            raise ValueError("classes: give at least one class name")
        enc, x = self.encoding, {**self.input, "class_names": names}
        with torch.no_grad():
            open_vocab = self.model.open_vocab_inference(enc.features, [x], enc.padded_size)
            result = self.model.postprocess(enc.sem_seg, enc.depth, open_vocab, [x], enc.image_sizes)[0]
        segments = {int(s["category_id"]): s for s in result["open_vocab_segments"]}
        answers = []
        for j, name in enumerate(names):
            s = segments.get(j)
            answers.append({
                "name": name,
                "found": s is not None and int(s["area"]) > 0,
                "area": int(s["area"]) if s else 0,
                "depth_median": float(s["depth_median"]) if s else math.nan,
                "depth_mean": float(s["depth"]) if s else math.nan,
                "depth_valid": bool(s["depth_valid"]) if s else False,
            })
        self.class_names = names
        self.class_labels = result["open_vocab_seg"].argmax(dim=0).cpu().numpy()
        self.class_answers = answers
        return answers

    def depth(self) -> np.ndarray:
        """The predicted depth (H, W) metres at the original size."""
        return self.encoding.output_depth(0).detach().float().cpu().numpy()


# ---------------------------------------------------------------------------------------------
# Overlays
# ---------------------------------------------------------------------------------------------
def query_color(index: int) -> np.ndarray:
    """The RGB uint8 colour of the ``index``-th answer (detectron2's colour map, in order)."""
    return _PALETTE[index % len(_PALETTE)]


def _legend(lines: Sequence[str], colors: Sequence[np.ndarray], min_width: int) -> np.ndarray:
    """A white panel with one coloured swatch + text line per answer, RGB uint8."""
    font, scale, thickness, line_h = cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1, 16
    widths = [cv2.getTextSize(line, font, scale, thickness)[0][0] for line in lines]
    width = max([min_width] + [w + 24 for w in widths])
    panel = np.full((line_h * len(lines) + 6, width, 3), 255, dtype=np.uint8)
    for k, (line, color) in enumerate(zip(lines, colors)):
        y = 4 + k * line_h
        panel[y + 2: y + 12, 4:14] = color
        cv2.putText(panel, line, (18, y + 11), font, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    return panel


def _stack(image: np.ndarray, legend: np.ndarray) -> np.ndarray:
    width = max(image.shape[1], legend.shape[1])
    pad = lambda im: np.pad(im, ((0, 0), (0, width - im.shape[1]), (0, 0)), constant_values=255)  # noqa: E731
    return np.concatenate([pad(image), pad(legend)], axis=0)


def draw_query_overlay(image_rgb: np.ndarray, answers: Sequence[Mapping], *, alpha: float = 0.5) -> np.ndarray:
    """The image with each answer's mask filled and outlined in its colour (:func:`query_color`) and
    labelled with its number and distance ("2 12.4 m"), over a legend of the numbered answer lines
    (:func:`format_answer`); an empty mask appears in the legend only. RGB uint8."""
    visualizer = DepthPanopticVisualizer(image_rgb, None)
    for k, answer in enumerate(answers):
        mask = answer["mask"]
        mask = (mask.cpu().numpy() if torch.is_tensor(mask) else np.asarray(mask)).astype(np.uint8)
        if mask.any():
            color = query_color(k) / 255.0
            visualizer.draw_binary_mask(
                mask, color=color, edge_color=SEGMENT_EDGE_COLOR, alpha=alpha,
                text=segment_label(str(k + 1), _finite(answer.get("depth_median"))),
            )
    image = visualizer.output.get_image()
    if not answers:
        return image
    lines = [f"{k + 1}. {format_answer(a)}" for k, a in enumerate(answers)]
    return _stack(image, _legend(lines, [query_color(k) for k in range(len(answers))], image.shape[1]))


def draw_class_overlay(
    image_rgb: np.ndarray, labels: np.ndarray, answers: Sequence[Mapping], depth: Optional[np.ndarray] = None,
    metadata=None,
) -> np.ndarray:
    """The open-vocabulary regions of :meth:`ImageQueries.classes` (``labels``: index into the names,
    per pixel) drawn as the semantic overlay ("car 12.4 m" per region,
    :meth:`DepthPanopticVisualizer.draw_sem_seg_depth`), each name in its colour, over a legend of the
    class lines (:func:`format_class_answer`); a name without a valid depth (``depth_valid``) is drawn
    without a distance. ``metadata``: the dataset's, for ``depth_range``. RGB uint8."""
    names = [str(a["name"]) for a in answers]
    meta = Metadata(name="__segdep_query_classes")
    meta.set(
        stuff_classes=names, stuff_colors=[query_color(k).tolist() for k in range(len(names))],
        # the model's verdict (its classes without depth match names case- and synonym-insensitively)
        classes_without_depth=[str(a["name"]) for a in answers if not a.get("depth_valid", False)],
    )
    if metadata is not None and metadata.get("depth_range", None) is not None:
        meta.set(depth_range=metadata.get("depth_range"))
    image = DepthPanopticVisualizer(image_rgb, meta).draw_sem_seg_depth(labels, depth).get_image()
    lines = [format_class_answer(a) for a in answers]
    return _stack(image, _legend(lines, [query_color(k) for k in range(len(names))], image.shape[1]))


# ---------------------------------------------------------------------------------------------
# Interactive questions
# ---------------------------------------------------------------------------------------------
def interactive(
    queries: ImageQueries, lines: Iterable[str], emit: Callable[[str], None], prompt: Optional[Callable] = None
) -> str:
    """Answer the questions read from ``lines`` (e.g. ``sys.stdin``) about one image, one per line, each
    answer line given to ``emit`` as it comes (see :data:`INTERACTIVE_HELP`):

    * a sentence: a referring query (:meth:`ImageQueries.ask`, backbone not run again);
    * ``:classes a,b,c``: open-vocabulary class names (:meth:`ImageQueries.classes`);
    * an empty line or ``:next``: done with this image -> returns ``"next"``;
    * ``:quit`` or the end of ``lines``: done with the session -> returns ``"quit"``;
    * ``:help``: :data:`INTERACTIVE_HELP`.

    ``prompt()`` is called before each line is read (the tool writes "query> " to a terminal).
    """
    iterator = iter(lines)
    while True:
        if prompt is not None:
            prompt()
        try:
            line = next(iterator)
        except StopIteration:
            return "quit"
        line = line.strip()
        if line in ("", ":next", ":n"):
            return "next"
        if line in (":quit", ":q", ":exit"):
            return "quit"
        if line in (":help", ":h", "?"):
            emit(INTERACTIVE_HELP)
        elif line.startswith(":classes"):
            names = parse_class_names(line[len(":classes"):])
            if not names:
                emit("give class names: :classes car,truck,road")
                continue
            try:
                answers = queries.classes(names)
            except (AttributeError, ValueError) as e:  # a model without the open-vocabulary head
                emit(f"cannot answer class names: {e}")
                continue
            for answer in answers:
                emit(format_class_answer(answer))
        elif line.startswith(":"):
            emit(f"unknown command {line.split()[0]!r}: {INTERACTIVE_HELP}")
        else:
            for answer in queries.ask([line]):
                emit(format_answer(answer))

