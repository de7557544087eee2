"""The one typed-config loader (data/typed_config.py): nested dataclasses, tuples, Optional,
Literal, scalar checks, OmegaConf interpolations, and unknown keys named by their dotted path."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest
from omegaconf import OmegaConf

from data.typed_config import ConfigKeyError, ConfigTypeError, from_mapping


@dataclass
class Inner:
    width: int = 4
    scale: float = 1.0
    hw: tuple[int, int] = (96, 96)


@dataclass
class Leaf:
    name: str = "leaf"


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    maybe: Optional[Inner] = None
    weights: str | None = None
    cameras: tuple[str, ...] = ("front", "wrist")
    dims: list[int] = field(default_factory=lambda: [1, 2])
    mode: bool | Literal["auto"] = "auto"
    table: dict[str, Leaf] = field(default_factory=dict)
    sources: tuple[str, ...] | None = None  # a tuple by its type only (the default is None)
    untyped = 3  # a class attribute, not a field


@dataclass
class NoHints:  # no resolvable annotations: the defaults guide the conversion
    pair: "Undefined" = (1, 2)  # noqa: F821
    inner: "Undefined" = field(default_factory=Inner)  # noqa: F821


@dataclass
class Required:
    must: int
    may: int = 0


def test_nested_dataclasses_tuples_lists_and_defaults():
    cfg = from_mapping(Outer, {"inner": {"width": 8, "hw": [64, 80]}, "cameras": ["wrist"], "dims": (3, 4, 5)})
    assert cfg.inner == Inner(width=8, scale=1.0, hw=(64, 80))
    assert isinstance(cfg.inner.hw, tuple) and cfg.cameras == ("wrist",) and isinstance(cfg.cameras, tuple)
    assert cfg.dims == [3, 4, 5] and isinstance(cfg.dims, list)
    assert cfg.maybe is None and cfg.weights is None and cfg.mode == "auto"  # left out: defaults
    assert from_mapping(Outer, None) == Outer()
    assert from_mapping(Outer, {"inner": Inner(width=2)}).inner == Inner(width=2)  # instances pass through


def test_optional_fields_take_none_or_the_type():
    assert from_mapping(Outer, {"maybe": {"width": 2}}).maybe == Inner(width=2)
    assert from_mapping(Outer, {"maybe": None, "weights": None}).maybe is None
    assert from_mapping(Outer, {"weights": "w.pth"}).weights == "w.pth"
    sources = from_mapping(Outer, {"sources": ["demo", "teleop"]}).sources
    assert sources == ("demo", "teleop") and isinstance(sources, tuple)
    with pytest.raises(ConfigTypeError, match=r"^weights: expected str, got int 3$"):
        from_mapping(Outer, {"weights": 3})
    with pytest.raises(ConfigKeyError, match=r"unknown key 'maybe\.widht' for Inner"):
        from_mapping(Outer, {"maybe": {"widht": 2}})


def test_unknown_keys_name_the_dotted_path_the_class_and_the_known_keys():
    with pytest.raises(KeyError) as e:
        from_mapping(Outer, {"inner": {"widht": 8}}, where="policy")
    assert str(e.value) == "unknown key 'policy.inner.widht' for Inner; known: hw, scale, width"
    with pytest.raises(ConfigKeyError, match=r"^unknown keys 'cameraz', 'untyped' for Outer; known: cameras, dims, "):
        from_mapping(Outer, {"cameraz": [], "untyped": 1})
    with pytest.raises(ConfigKeyError, match=r"unknown key 'table\.a\.nmae' for Leaf; known: name"):
        from_mapping(Outer, {"table": {"a": {"nmae": "x"}}})
    assert from_mapping(Outer, {"table": {"a": {"name": "x"}}}).table == {"a": Leaf("x")}


def test_missing_required_keys_are_named():
    assert from_mapping(Required, {"must": 1}) == Required(1, 0)
    with pytest.raises(ConfigKeyError, match=r"missing key 'root\.must' for Required"):
        from_mapping(Required, {"may": 1}, where="root")


def test_scalar_types_literals_and_lengths_are_checked():
    assert from_mapping(Inner, {"scale": 2}).scale == 2.0 and isinstance(from_mapping(Inner, {"scale": 2}).scale, float)
    for bad, msg in (({"width": "8"}, r"width: expected int, got str '8'"),
                     ({"width": True}, r"width: expected int, got bool"),
                     ({"scale": "1e-4"}, r"scale: expected float, got str"),
                     ({"hw": [96]}, r"hw: expected 2 items"),
                     ({"hw": [96, "x"]}, r"hw\[1\]: expected int")):
        with pytest.raises(ConfigTypeError, match=msg):
            from_mapping(Inner, bad)
    assert from_mapping(Outer, {"mode": True}).mode is True
    with pytest.raises(ConfigTypeError, match="mode"):
        from_mapping(Outer, {"mode": "sometimes"})
    with pytest.raises(ConfigTypeError, match=r"cameras: expected a list, got str"):
        from_mapping(Outer, {"cameras": "front"})
    with pytest.raises(ConfigTypeError, match=r"inner: expected a mapping for Inner"):
        from_mapping(Outer, {"inner": 3})


def test_without_type_hints_the_defaults_guide_the_conversion():
    cfg = from_mapping(NoHints, {"pair": [3, 4], "inner": {"width": 1}})
    assert cfg.pair == (3, 4) and cfg.inner == Inner(width=1)
    with pytest.raises(ConfigKeyError, match="inner.nope"):
        from_mapping(NoHints, {"inner": {"nope": 1}})


def test_omegaconf_containers_with_interpolations():
    root = OmegaConf.create({"obs": {"cameras": ["front"], "image_hw": [16, 24]},
                             "policy": {"inner": {"hw": "${obs.image_hw}"}, "cameras": "${obs.cameras}"}})
    cfg = from_mapping(Outer, root.policy, where="policy")  # a sub-node resolves against the root
    assert cfg.inner.hw == (16, 24) and cfg.cameras == ("front",)
    with pytest.raises(ConfigKeyError, match=r"'policy\.inner\.hww'"):
        from_mapping(Outer, OmegaConf.create({"inner": {"hww": 1}}), where="policy")


def test_sim_from_mapping_is_the_same_loader():
    from sim.config import EnvConfig, from_mapping as sim_from_mapping

    env = sim_from_mapping(EnvConfig, {"render": {"cameras": ["wrist"], "image_hw": [32, 32]},
                                       "workspace_low": [0, 0, 0]})
    assert env.render.cameras == ("wrist",) and env.render.image_hw == (32, 32)
    assert env.workspace_low == (0.0, 0.0, 0.0) and isinstance(env.workspace_low[0], float)
    with pytest.raises(KeyError, match=r"unknown key 'render\.camera' for RenderConfig; known: calibration, cameras"):
        sim_from_mapping(EnvConfig, {"render": {"camera": ["wrist"]}})
