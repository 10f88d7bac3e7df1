#!/usr/bin/env python3
"""Tests of scripts/check_chart.py's own strictness: `strict_openapi` must refuse an unknown
field wherever the API server's strict field validation does (nullable objects included), and
accept what the API server keeps (maps, preserve-unknown-fields, int-or-string, embedded
resources). Run by scripts/check-chart.sh, or alone:

    .venv-chart/bin/python -m unittest scripts/test_check_chart.py
"""

from __future__ import annotations

import copy
import sys
import unittest
from pathlib import Path

import jsonschema
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_chart import CRD_FILE, ROOT, strict_openapi  # noqa: E402


def crd_validator() -> jsonschema.Draft7Validator:
    crd = yaml.safe_load(CRD_FILE.read_text())
    return jsonschema.Draft7Validator(strict_openapi(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]))


def errors(validator: jsonschema.Draft7Validator, doc: dict) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def example(name: str) -> dict:
    (doc,) = [d for d in yaml.safe_load_all((ROOT / "examples" / name).read_text()) if d]
    return doc


class TheTaskStreamCrd(unittest.TestCase):
    validator = crd_validator()

    def test_the_examples_pass(self) -> None:
        for path in sorted((ROOT / "examples").glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if doc and doc.get("kind") == "TaskStream":
                    self.assertEqual(errors(self.validator, doc), [], path.name)

    def test_the_old_autoscaling_field_name_fails(self) -> None:
        """The field that shipped misspelt: unknown to the CRD, inside the nullable
        `spec.autoscaling`."""
        doc = example("autoscaling.yaml")
        auto = doc["spec"]["autoscaling"]
        auto["targetCpuUtilizationPercentage"] = auto.pop("targetCPUUtilizationPercentage")
        found = errors(self.validator, doc)
        self.assertTrue(
            any("spec.autoscaling" in e and "targetCpuUtilizationPercentage" in e for e in found), found
        )

    def test_unknown_fields_deep_in_nullable_objects_fail(self) -> None:
        cases = [
            ("redis", "tls", "caSecretRef"),
            ("pod", "affinity", "nodeAffinity"),
            ("sidecar", "resources"),
            ("websocket",),
        ]
        for path in cases:
            doc = example("redis-tls.yaml")
            node = doc["spec"]
            for key in path:
                node = node.setdefault(key, {})
            node["bogus"] = 1
            found = errors(self.validator, doc)
            self.assertTrue(any("bogus" in e for e in found), f"{path}: {found}")

    def test_maps_and_quantities_stay_open(self) -> None:
        doc = example("minimal.yaml")
        doc["spec"]["pod"] = {"nodeSelector": {"any-key": "v"}, "annotations": {"x/y": "z"}}
        doc["spec"]["app"]["resources"] = {"requests": {"cpu": "250m", "memory": 1024}}
        self.assertEqual(errors(self.validator, doc), [])

    def test_null_is_accepted_where_nullable(self) -> None:
        doc = example("minimal.yaml")
        doc["spec"]["autoscaling"] = None
        self.assertEqual(errors(self.validator, doc), [])


class TheApiServerRules(unittest.TestCase):
    """Each rule on a small schema, as the API server applies it to structural schemas."""

    @staticmethod
    def check(schema: dict, doc: dict) -> list[str]:
        root = {"type": "object", "properties": {"spec": schema}}
        return errors(jsonschema.Draft7Validator(strict_openapi(root)), {"spec": doc})

    def test_nullable_object_refuses_unknown_fields(self) -> None:
        schema = {"type": "object", "nullable": True, "properties": {"a": {"type": "integer"}}}
        self.assertEqual(self.check(schema, {"a": 1}), [])
        self.assertEqual(self.check(schema, None), [])
        self.assertTrue(self.check(schema, {"a": 1, "b": 2}))

    def test_object_without_properties_keeps_nothing(self) -> None:
        self.assertTrue(self.check({"type": "object"}, {"b": 2}))
        self.assertTrue(self.check({"type": "object", "nullable": True}, {"b": 2}))

    def test_preserve_unknown_fields_keeps_them_at_that_node_only(self) -> None:
        schema = {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": True,
            "properties": {"inner": {"type": "object", "properties": {"a": {"type": "integer"}}}},
        }
        self.assertEqual(self.check(schema, {"anything": 1, "inner": {"a": 1}}), [])
        self.assertTrue(self.check(schema, {"inner": {"a": 1, "b": 2}}))

    def test_maps_take_any_key_but_check_values(self) -> None:
        schema = {
            "type": "object",
            "additionalProperties": {"type": "object", "properties": {"a": {"type": "integer"}}},
        }
        self.assertEqual(self.check(schema, {"k1": {"a": 1}, "k2": {}}), [])
        self.assertTrue(self.check(schema, {"k1": {"a": 1, "b": 2}}))

    def test_int_or_string(self) -> None:
        schema = {"type": "object", "properties": {"port": {"x-kubernetes-int-or-string": True}}}
        self.assertEqual(self.check(schema, {"port": 80}), [])
        self.assertEqual(self.check(schema, {"port": "http"}), [])
        self.assertTrue(self.check(schema, {"port": 1.5}))

    def test_embedded_resource_keeps_type_and_object_meta(self) -> None:
        schema = {
            "type": "object",
            "x-kubernetes-embedded-resource": True,
            "properties": {"spec": {"type": "object", "properties": {"a": {"type": "integer"}}}},
        }
        ok = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "spec": {"a": 1}}
        self.assertEqual(self.check(schema, ok), [])
        bad = copy.deepcopy(ok)
        bad["extra"] = 1
        self.assertTrue(self.check(schema, bad))

    def test_items_of_nullable_arrays(self) -> None:
        schema = {
            "type": "array",
            "nullable": True,
            "items": {"type": "object", "properties": {"name": {"type": "string"}}},
        }
        self.assertEqual(self.check(schema, [{"name": "a"}]), [])
        self.assertTrue(self.check(schema, [{"name": "a", "nmae": "b"}]))

    def test_value_validations_do_not_refuse_declared_fields(self) -> None:
        """anyOf/allOf only add value checks: their branches are not the structure."""
        schema = {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "anyOf": [{"required": ["a"]}, {"required": ["b"], "properties": {"b": {"minimum": 1}}}],
        }
        self.assertEqual(self.check(schema, {"a": 1, "b": 2}), [])
        self.assertTrue(self.check(schema, {"a": 1, "c": 2}))

    def test_nullable_enum_accepts_null(self) -> None:
        schema = {"type": "object", "properties": {"m": {"type": "string", "enum": ["x"], "nullable": True}}}
        self.assertEqual(self.check(schema, {"m": None}), [])
        self.assertTrue(self.check(schema, {"m": "y"}))


if __name__ == "__main__":
    unittest.main()
