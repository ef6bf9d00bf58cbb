"""Transforms pickle as their definition, as Ray ships them to worker processes: a Python one
as the module it is defined in, a scientist's one as its source. Neither needs the registry."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import transforms
from transforms import physics
from transforms.columns import Column
from transforms.errors import TransformSignatureError
from transforms.transform import Transform, transform
from transforms.usercode import UserTransform, compile_user_transform

ROOT = Path(transforms.__file__).resolve().parents[1]
HT = """
def pickletest_ht(pt, cut):
    total = 0.0
    for v in pt:
        if v > cut:
            total += v
    return total
"""
PT = Column(np.array([10.0, 30.0, 50.0, 5.0]), np.array([0, 3, 3, 4], dtype=np.int64))
CUT = Column(np.array([20.0, 0.0, 1.0]))


@transform(inputs={"x": "flat"}, outputs={"y": "float64"})
def pickletest_double(x: float) -> float:
    return 2.0 * x


def user_ht() -> UserTransform:
    return compile_user_transform("pickletest_ht", HT, {"pt": "jagged", "cut": "flat"}, {"ht": "float64"})


def test_python_transforms_come_back_as_themselves() -> None:
    assert pickle.loads(pickle.dumps(physics.met)) is physics.met
    assert pickle.loads(pickle.dumps(pickletest_double)) is pickletest_double
    assert pickle.loads(pickle.dumps([physics.met, physics.delta_r])) == [physics.met, physics.delta_r]


def test_user_transforms_are_rebuilt_from_their_source() -> None:
    t = user_ht()
    again = pickle.loads(pickle.dumps(t))
    assert isinstance(again, UserTransform) and again == t and again.code_hash == t.code_hash
    np.testing.assert_array_equal(again.apply({"pt": PT, "cut": CUT}, 3)["ht"].values, [80.0, 0.0, 5.0])


def test_a_transform_that_cannot_be_imported_is_refused_when_pickled() -> None:
    @transform(inputs={"x": "flat"}, outputs={"y": "float64"})
    def pickletest_local(x: float) -> float:
        return x

    with pytest.raises(pickle.PicklingError, match="transform 'pickletest_local' cannot be pickled.*<locals>"):
        pickle.dumps(pickletest_local)
    other = Transform("met", "event", {"px": "jagged"}, {"y": "float64"}, "0" * 64, "", physics.met.kernel)
    with pytest.raises(pickle.PicklingError, match="transform 'met' cannot be pickled.*here has code"):
        pickle.dumps(other)


def test_a_changed_definition_is_refused_when_unpickled() -> None:
    data = pickle.dumps(physics.met).replace(physics.met.code_hash.encode(), b"0" * 64)
    with pytest.raises(TransformSignatureError, match="transform 'met' here has code"):
        pickle.loads(data)


def test_round_trip_in_a_fresh_process(tmp_path: Path) -> None:
    # What a Ray worker does: unpickle in a process that has imported nothing of ours.
    payload = tmp_path / "transforms.pickle"
    payload.write_bytes(pickle.dumps((physics.met, user_ht(), PT, CUT)))
    script = textwrap.dedent(
        f"""
        import json, pickle, sys
        met, ht, pt, cut = pickle.loads(open({str(payload)!r}, "rb").read())
        out = {{
            "met": met.apply({{"px": pt, "py": pt}}, 3)["met_pt"].values.tolist(),
            "ht": ht.apply({{"pt": pt, "cut": cut}}, 3)["ht"].values.tolist(),
            "types": [type(met).__name__, type(ht).__name__],
            "registry": "transforms.registry" in sys.modules,
        }}
        print(json.dumps(out))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VDATA_KERNEL_CACHE": str(tmp_path / "kernels")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["types"] == ["Transform", "UserTransform"] and out["registry"] is False
    np.testing.assert_allclose(out["met"], [90.0 * np.sqrt(2), 0.0, 5.0 * np.sqrt(2)])
    assert out["ht"] == [80.0, 0.0, 5.0]
