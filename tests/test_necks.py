import pytest
import torch
from torch import nn

from lightning_margin.necks import create_neck, list_necks


def test_option_e_is_bn_dropout_fc_bn_in_that_order():
    neck = create_neck("bn_dropout_fc_bn", in_features=20, embedding_size=8, dropout=0.4)
    kinds = [type(layer) for layer in neck]
    assert kinds == [nn.BatchNorm1d, nn.Dropout, nn.Linear, nn.BatchNorm1d]
    assert neck[0].num_features == 20 and neck[1].p == 0.4 and neck[3].num_features == 8


@pytest.mark.parametrize("name", [n for n in list_necks() if n != "identity"])
def test_necks_map_features_to_embedding_size(name):
    neck = create_neck(name, in_features=20, embedding_size=8)
    assert neck(torch.randn(4, 20)).shape == (4, 8)


def test_identity_neck_requires_matching_width():
    assert isinstance(create_neck("identity", 8, 8), nn.Identity)
    with pytest.raises(ValueError, match="outputs 20"):
        create_neck("identity", in_features=20, embedding_size=8)


def test_unknown_neck_lists_the_allowed_names():
    with pytest.raises(ValueError, match="bn_dropout_fc_bn"):
        create_neck("mlp", 20, 8)
