"""Input data: the TFRecord schema, B.2 augmentation and tf.data pipelines."""
from tnet_tf.data.pipeline import (InputConfig, SkippedRecordsLogger, input_config_for,
                                   make_dataset, new_skip_counter)

__all__ = ["InputConfig", "SkippedRecordsLogger", "input_config_for", "make_dataset",
           "new_skip_counter"]
