"""The weight-shared supernet and its SubNetAct operators (LayerSelect, WeightSlice, SubnetNorm).

`supernet.config` is pure Python; importing it does not import torch.
"""
