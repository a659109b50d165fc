"""CUB-200-2011 (200 classes): TNet-B0..B4 and EfficientNet-B0..B4 fine-tuned from ImageNet.

    python -m data_prep.cub --input_dir=/data/cub --output_dir=/data/cub_tfrecords
    python -m experiments.cub --stage=train --backbone=b3 \\
        --pretrained=/weights/efficientnetb3_notop.h5 --data_dir=/data/cub_tfrecords --model_dir=runs/cub_b3
    python -m experiments.cub --stage=evaluate --data_dir=/data/cub_tfrecords --model_dir=runs/cub_b3
    python -m experiments.cub --stage=baseline --backbone=b3 --pretrained=... --model_dir=runs/cub_b3

The recipe (experiments/recipes.py) uses ImageNet-pretrained backbones:
`--pretrained=imagenet` downloads the Keras weights (offline it fails at
start; pass the path of a Keras `efficientnetbX_notop.h5` file instead).
The recipe adds the authors' auxiliary contrastive loss to TNet and the
baseline (weight 100, margin 0.4; `--contrastive_weight=0` turns it off).
"""
from experiments import recipes, runner
from experiments.run_config import Entry

ENTRY = Entry(dataset="cub", recipes=recipes.CUB, eval_split="test",
              tnet_stages=("train",))


if __name__ == "__main__":
    runner.start(ENTRY, default_stage="train")
