"""Converters from the raw dataset layouts to sharded TFRecords.

Run one per dataset: `python -m data_prep.fmow`, `data_prep.imagenet`,
`data_prep.cub`, `data_prep.nabirds` (see docs/data.md). The shared writer
is `data_prep.shards`; the Example schema is `tnet_tf.data.schema`.
"""
