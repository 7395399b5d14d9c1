#!/usr/bin/env python
"""Ask a SegDep model about images: referring queries ("the nearest car") answered with a mask, its area and
its distance, and open-vocabulary class names answered with their region's area and median distance.

    python tools/query.py --config C --weights W --input street.png \\
        --text "the nearest car" --text "the van on the left" --classes car,truck,road
    # questions typed (or piped) one per line, the image's features computed once
    python tools/query.py --config C --weights W --input frames/ --interactive

Prints one line per answer::

    the nearest car: 1830 px, 12.4 m away, score 0.91
    the van on the left: not found (score 0.12)
    car: 2210 px, 14.8 m away

(area in pixels of the original image, distance = median predicted depth over the mask / region in metres,
score = the mask's confidence, see ``SegDep.answer``), and writes to ``--output`` (default
``output/query``) per image ``<stem>_query.png`` (each query's mask filled and outlined in its own colour,
numbered, over the answer lines) and ``<stem>_classes.png`` (with ``--classes``), and ``answers.json``
(every answer of every image, masks left out).

``--interactive``: for each image in turn, the ``--text`` / ``--classes`` answers first, then one question
per line from standard input: a sentence is a referring query; ``:classes a,b,c`` asks for class names; an
empty line or ``:next`` moves to the next image; ``:quit`` or the end of input (Ctrl-D, the end of a pipe)
ends the session, the images not reached yet are skipped; ``:help`` lists this. Each image is encoded once
(``SegDep.encode_image``: backbone, FPN, closed-set and depth heads) and every question reuses it
(``SegDep.answer``); the prompt "query> " goes to standard error, and only to a terminal.

Inputs: image files, folders (their images) and glob patterns, as tools/demo.py takes them; preprocessing
is DefaultPredictor's (``INPUT.MIN_SIZE_TEST``; answers at the original size). Trailing ``KEY VALUE`` pairs
override the config.
"""
import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from PIL import Image  # noqa: E402

import segdep_d2  # noqa: E402,F401  (registers datasets and models)
from segdep_d2 import add_segdep_config  # noqa: E402
from segdep_d2.engine.inference import BadInputError, Predictor, image_files, unique_stem  # noqa: E402
from segdep_d2.engine.query import (  # noqa: E402
    ImageQueries,
    answer_json,
    check_queryable,
    class_json,
    draw_class_overlay,
    draw_query_overlay,
    format_answer,
    format_class_answer,
    interactive,
    parse_class_names,
    read_image,
)

logger = logging.getLogger("segdep_d2.query")

DEFAULT_OUTPUT = os.path.join("output", "query")


def setup_cfg(config_file, opts=(), weights=None):
    """Config as tools/train_net.py builds it (``--weights`` -> ``MODEL.WEIGHTS``), frozen."""
    cfg = get_cfg()
    add_segdep_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    if weights:
        cfg.MODEL.WEIGHTS = weights
    cfg.freeze()
    return cfg


def load_model(cfg):
    """The model of ``cfg`` in eval mode, ``cfg.MODEL.WEIGHTS`` loaded when set."""
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:
        logger.warning("no --weights / MODEL.WEIGHTS: answering with a randomly initialised model")
    return model.eval()


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", "--config", dest="config_file", required=True, metavar="FILE",
                        help="path to config file")
    parser.add_argument("--weights", default=None, metavar="FILE", help="checkpoint (sets MODEL.WEIGHTS)")
    parser.add_argument("--input", nargs="+", required=True, help="image files, folders or glob patterns")
    parser.add_argument("--text", action="append", default=[], metavar="QUERY",
                        help="a referring query, e.g. \"the nearest car\" (repeat for more)")
    parser.add_argument("--classes", default=None, metavar="A,B,C",
                        help="comma-separated class names: area and median distance of each one's region")
    parser.add_argument("--interactive", action="store_true",
                        help="read one query per line from standard input for each image (see above)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help=f"folder for overlays and answers.json "
                        f"(default {DEFAULT_OUTPUT})")
    parser.add_argument("opts", default=[], nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def _save(image_rgb, path):
    Image.fromarray(image_rgb).save(path)
    return path


def run(cfg, model, files, output_dir, *, texts=(), classes=(), stdin=None, out=None, prompt=None):
    """Answer ``texts`` and ``classes`` about every image of ``files`` (then, with ``stdin``, the questions
    read from it, :func:`segdep_d2.engine.query.interactive`), print each answer line to ``out`` (default
    stdout) and write the overlays and ``answers.json`` to ``output_dir``.

    Returns:
        dict: what ``answers.json`` holds: ``{"images": [{"file_name", "queries": [...], "classes": [...],
        "overlays": [paths]}], "written": [paths]}``.
    """
    out = out or sys.stdout

    def emit(line):
        print(line, file=out, flush=True)

    predictor = Predictor(cfg, model=model)  # DefaultPredictor's preprocessing, metadata for the overlays
    os.makedirs(output_dir, exist_ok=True)
    report, written, used = {"images": []}, [], set()
    for index, path in enumerate(files):
        image = read_image(path)
        queries = ImageQueries(model, predictor.model_input(image, "BGR"))
        if len(files) > 1 or stdin is not None:
            emit(f"== {path} ({index + 1}/{len(files)}) ==")
        for answer in queries.ask(list(texts)):
            emit(format_answer(answer))
        if classes:
            for answer in queries.classes(classes):
                emit(format_class_answer(answer))
        state = interactive(queries, stdin, emit, prompt) if stdin is not None else "next"

        stem = os.path.join(output_dir, unique_stem(os.path.splitext(os.path.basename(path))[0], used))
        image_rgb, overlays = image[:, :, ::-1], []
        if queries.answers:
            overlays.append(_save(draw_query_overlay(image_rgb, queries.answers), f"{stem}_query.png"))
        if queries.class_answers:
            picture = draw_class_overlay(
                image_rgb, queries.class_labels, queries.class_answers, queries.depth(), predictor.metadata
            )
            overlays.append(_save(picture, f"{stem}_classes.png"))
        written += overlays
        report["images"].append({
            "file_name": path,
            "height": int(image.shape[0]),
            "width": int(image.shape[1]),
            "queries": [answer_json(a) for a in queries.answers],
            "classes": [class_json(a) for a in queries.class_answers],
            "overlays": overlays,
        })
        if state == "quit":
            if index + 1 < len(files):
                logger.info(f"session ended: {len(files) - index - 1} images not asked about")
            break
    answers_path = os.path.join(output_dir, "answers.json")
    with open(answers_path, "w") as f:
        json.dump(report, f, indent=2)
    report["written"] = written + [answers_path]
    logger.info(f"wrote {len(report['written'])} files to {output_dir}")
    return report


def _terminal_prompt():
    print("query> ", end="", file=sys.stderr, flush=True)


def main(argv=None, stdin=None, out=None):
    """``stdin`` / ``out``: where ``--interactive`` reads questions and answers go (default the process's)."""
    args = get_parser().parse_args(argv)
    setup_logger(name="segdep_d2")
    setup_logger(name="detectron2", abbrev_name="d2")  # checkpointer messages
    classes = parse_class_names(args.classes) if args.classes is not None else []
    if args.classes is not None and not classes:
        raise SystemExit("query.py: error: --classes names no class (give e.g. --classes car,truck,road)")
    if not (args.text or classes or args.interactive):
        raise SystemExit("query.py: error: nothing to ask: give --text, --classes or --interactive")
    cfg = setup_cfg(args.config_file, args.opts, args.weights)
    try:
        # --interactive asks referring queries too
        check_queryable(cfg, texts=bool(args.text) or args.interactive, classes=bool(classes))
        files = image_files(args.input)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"query.py: error: {e}")
    model = load_model(cfg)
    stdin = (stdin or sys.stdin) if args.interactive else None
    on_terminal = stdin is not None and hasattr(stdin, "isatty") and stdin.isatty()
    prompt = _terminal_prompt if on_terminal else None
    try:
        with torch.no_grad():
            return run(cfg, model, files, args.output, texts=args.text, classes=classes, stdin=stdin, out=out,
                       prompt=prompt)
    except BadInputError as e:
        raise SystemExit(f"query.py: error: {e}")


if __name__ == "__main__":
    main()
