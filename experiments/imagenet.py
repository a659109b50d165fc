"""ImageNet (1000 classes, BagNet-77): the paper's Table 1.

    python -m data_prep.imagenet --input_dir=/data/ILSVRC2012 --output_dir=/data/imagenet
    python -m experiments.imagenet --stage=train    --data_dir=/data/imagenet --model_dir=runs/in
    python -m experiments.imagenet --stage=evaluate --data_dir=/data/imagenet --model_dir=runs/in
    python -m experiments.imagenet --stage=baseline --data_dir=/data/imagenet --model_dir=runs/in

Defaults are the paper's recipe (experiments/recipes.py); `--smoke` checks an
installation on generated data in about a minute.
"""
from experiments import recipes, runner
from experiments.run_config import Entry

ENTRY = Entry(dataset="imagenet", recipes=recipes.IMAGENET, eval_split="validation",
              tnet_stages=("train",))


if __name__ == "__main__":
    runner.start(ENTRY, default_stage="train")
