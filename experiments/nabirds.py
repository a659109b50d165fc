"""NABirds (555 classes): TNet-B0..B4 and EfficientNet-B0..B4 fine-tuned from ImageNet.

    python -m data_prep.nabirds --input_dir=/data/nabirds --output_dir=/data/nabirds_tfrecords
    python -m experiments.nabirds --stage=train --backbone=b3 \\
        --pretrained=/weights/efficientnetb3_notop.h5 --data_dir=/data/nabirds_tfrecords --model_dir=runs/nabirds_b3
    python -m experiments.nabirds --stage=evaluate --data_dir=/data/nabirds_tfrecords --model_dir=runs/nabirds_b3
    python -m experiments.nabirds --stage=baseline --backbone=b3 --pretrained=... --model_dir=runs/nabirds_b3

The recipe (experiments/recipes.py) uses ImageNet-pretrained backbones:
`--pretrained=imagenet` downloads the Keras weights (offline it fails at
start; pass the path of a Keras `efficientnetbX_notop.h5` file instead).
The recipe adds the authors' auxiliary contrastive loss to TNet and the
baseline (weight 100, margin 0.4; `--contrastive_weight=0` turns it off).
"""
from absl import app

from experiments import recipes, runner

ENTRY = runner.Entry(dataset="nabirds", recipes=recipes.NABIRDS, eval_split="test",
                     tnet_stages=("train",))
runner.define_flags(ENTRY, default_stage="train")

main = runner.main_for(ENTRY)


if __name__ == "__main__":
    app.run(main)
