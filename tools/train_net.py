#!/usr/bin/env python
"""Train / evaluate segdep_d2 models, as detectron2's tools/train_net.py.

    python tools/train_net.py --config-file projects/PanopticDepthLab/configs/... [--num-gpus N]
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS path/to/model.pth
    python tools/train_net.py --config-file ... --resume          # continue from last_checkpoint
    python tools/train_net.py --config-file ... --eval-only --deployed out/export/model.onnx

``--deployed PATH`` (with ``--eval-only``) evaluates a file written by tools/export_model.py
(``model.onnx`` in onnxruntime, ``model.pt2``, ``model.ts``, or the export folder) instead of the
eager model: the network runs in its runtime, the model's post-processing in Python, the evaluators
are the same.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.engine import default_argument_parser, default_setup, launch  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

import segdep_d2  # noqa: E402,F401  (registers datasets and models)
from segdep_d2 import add_segdep_config  # noqa: E402
from segdep_d2.engine import SegDepTrainer  # noqa: E402


def setup(args):
    cfg = get_cfg()
    add_segdep_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    # default_setup logs detectron2's and fvcore's messages; ours (e.g. each dataset's label counts) too
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="segdep_d2")
    return cfg


def main(args):
    cfg = setup(args)
    if args.deployed:
        from segdep_d2.modeling.deployed import load_deployed

        return SegDepTrainer.test(cfg, load_deployed(args.deployed, cfg))
    if args.eval_only:
        model = SegDepTrainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return SegDepTrainer.test(cfg, model)
    trainer = SegDepTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def get_parser():
    parser = default_argument_parser()
    parser.add_argument("--deployed", default=None, metavar="PATH",
                        help="with --eval-only: evaluate this export (tools/export_model.py) instead of the eager model")
    return parser


def parse_args(argv=None):
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.deployed and not args.eval_only:
        parser.error("--deployed evaluates an exported model: give --eval-only too")
    return args


if __name__ == "__main__":
    args = parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
