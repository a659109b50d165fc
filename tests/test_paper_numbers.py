"""The full-size models against the paper's Tables 1-2: parameters and FLOPs (eq. 11)."""
import pytest
import tensorflow as tf

import tnet_tf
from tnet_tf.profiling import count_flops_eq11

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def imagenet_tnet():
    return tnet_tf.TNet(tnet_tf.get_preset("imagenet"))


@pytest.fixture(scope="module")
def fmow_tnet():
    return tnet_tf.TNet(tnet_tf.get_preset("fmow"))


def test_parameter_counts_match_tables_1_and_2(imagenet_tnet, fmow_tnet):
    imagenet, fmow = tnet_tf.get_preset("imagenet"), tnet_tf.get_preset("fmow")
    imagenet_tnet(tf.zeros([1, 224, 224, 3]))
    bagnet = tnet_tf.Classifier(imagenet, input_size=224)
    efficientnet = tnet_tf.Classifier(fmow, input_size=224)
    bagnet.build([None, 224, 224, 3])
    efficientnet.build([None, 224, 224, 3])
    # replication.md: exact counts from Tables 3-5.
    assert bagnet.count_params() == 20_546_664            # paper: 20.55 M
    assert imagenet_tnet.count_params() == 21_859_949     # paper: 21.86 M
    assert efficientnet.count_params() == 4_128_993       # paper: 4.13 M
    fmow_tnet(tf.zeros([1, 448, 448, 3]))
    assert fmow_tnet.count_params() == pytest.approx(4.56e6, rel=0.005)


@pytest.mark.parametrize("locations, gflops", [([0], 1.82), ([1], 3.63), ([2], 5.43),
                                               ([3], 7.24), ([5], 10.84)])
def test_imagenet_tnet_flops_match_table_1(imagenet_tnet, locations, gflops):
    flops = count_flops_eq11(imagenet_tnet, (224, 224, 3), locations=locations)
    assert flops / 1e9 == pytest.approx(gflops, rel=0.02)


def test_bagnet77_baseline_flops_match_table_1():
    model = tnet_tf.Classifier(tnet_tf.get_preset("imagenet"), input_size=224)
    assert count_flops_eq11(model, (224, 224, 3)) / 1e9 == pytest.approx(18.42, rel=0.02)


@pytest.mark.parametrize("size, gflops", [(224, 0.39), (448, 1.54), (896, 6.18)])
def test_efficientnet_b0_baseline_flops_match_table_2(size, gflops):
    model = tnet_tf.Classifier(tnet_tf.get_preset("fmow"), input_size=size)
    assert count_flops_eq11(model, (size, size, 3)) / 1e9 == pytest.approx(gflops, rel=0.02)


@pytest.mark.parametrize("size, locations, gflops", [
    (224, [0], 0.39), (448, [1], 0.77), (448, [2], 1.16), (448, [3], 1.55),
    (896, [2, 1], 1.94), (896, [2, 2], 2.71)])
def test_fmow_tnet_flops_match_table_2(fmow_tnet, size, locations, gflops):
    flops = count_flops_eq11(fmow_tnet, (size, size, 3), locations=locations)
    assert flops / 1e9 == pytest.approx(gflops, rel=0.02)
