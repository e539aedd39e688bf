"""The Zipformer-Transducer baseline (DESIGN.md "Model": the paper's comparison system).

    from llmasr.zipformer.model import ZipformerTransducer, ZipformerSizes

Encoder: the k2-fsa ``zipformer`` package's Zipformer (PyPI ``zipformer``, imported module by module
by ``llmasr.zipformer.pkg``); stateless decoder and joiner as icefall's; RNN-T loss
(``llmasr.zipformer.loss``); 80-dim Kaldi fbank (``features``); BPE tokens (``tokens``); greedy and
modified beam search (``search``).  Training: ``tasks/zipformer_train.py``; decoding as an
evaluation system: ``tasks/zipformer_decode.py``.
"""
