"""fMoW (62 classes, EfficientNet-B0): the paper's Table 2, stage by stage.

    python -m data_prep.fmow --input_dir=/data/fmow-rgb --output_dir=/data/fmow
    python -m experiments.fmow --stage=train_448    --data_dir=/data/fmow --model_dir=runs/fmow
    python -m experiments.fmow --stage=finetune_896 --data_dir=/data/fmow --model_dir=runs/fmow
    python -m experiments.fmow --stage=evaluate     --data_dir=/data/fmow --model_dir=runs/fmow
    python -m experiments.fmow --stage=baseline_448 --data_dir=/data/fmow --model_dir=runs/fmow
    python -m experiments.fmow --stage=visualize    --data_dir=/data/fmow --model_dir=runs/fmow
    python -m experiments.fmow --stage=profile      --model_dir=runs/fmow

Every stage's defaults are the paper's recipe (experiments/recipes.py); any
field can be overridden by its flag. `--smoke` runs a stage end to end on a
tiny generated dataset in about a minute. Rerunning an interrupted stage
with the same command resumes it.
"""
from experiments import recipes, runner
from experiments.run_config import Entry

ENTRY = Entry(dataset="fmow", recipes=recipes.FMOW, eval_split="test",
              tnet_stages=("train_448", "finetune_896"))


if __name__ == "__main__":
    runner.start(ENTRY, default_stage="train_448")
