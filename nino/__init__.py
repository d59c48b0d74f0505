"""NiNo: neural graphs, nowcasters and the `NiNo` optimizer wrapper.

    opt = nino.NiNo(torch.optim.AdamW(model.parameters(), lr=6e-3), model,
                    ckpt='nino_no_posw.pt', period=1000, max_train_steps=10000)
"""

from .checkpoint import import_official, load_nowcaster, save_nowcaster
from .graph import NeuralGraph, UnsupportedLayerError, build_graph, graph_for_module
from .model import NiNoConfig, NiNoGNN, NiNoMLP, Nowcaster, build_nowcaster
from .optimizer import NiNo, k_schedule

__all__ = ['NeuralGraph', 'NiNo', 'NiNoConfig', 'NiNoGNN', 'NiNoMLP', 'Nowcaster', 'UnsupportedLayerError',
           'build_graph', 'build_nowcaster', 'graph_for_module', 'import_official', 'k_schedule',
           'load_nowcaster', 'save_nowcaster']
