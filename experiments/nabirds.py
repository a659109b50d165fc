"""NABirds (555 classes): TNet-B0..B4 and EfficientNet-B0..B4 fine-tuned from ImageNet.

    python -m data_prep.nabirds --input_dir=/data/nabirds --output_dir=/data/nabirds_tfrecords
    python -m experiments.nabirds --stage=train --backbone=b3 \\
        --pretrained=/weights/efficientnetb3_notop.h5 --data_dir=/data/nabirds_tfrecords --model_dir=runs/nabirds_b3
    python -m experiments.nabirds --stage=evaluate --data_dir=/data/nabirds_tfrecords --model_dir=runs/nabirds_b3
    python -m experiments.nabirds --stage=baseline --backbone=b3 --pretrained=... --model_dir=runs/nabirds_b3

Stages, recipe (ImageNet-pretrained backbones, the contrastive loss) and
flags are those of `experiments.cub`.
"""
from experiments import recipes, runner
from experiments.run_config import Entry

ENTRY = Entry(dataset="nabirds", recipes=recipes.NABIRDS, eval_split="test",
              tnet_stages=("train",))


if __name__ == "__main__":
    runner.start(ENTRY, default_stage="train")
