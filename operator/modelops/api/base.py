"""Shared pieces of the API models: camelCase base model, conditions, volumes, scheduling types.

Every string that reaches a Kubernetes object, a path or a Triton config is checked twice with the same rule:
by the API server at admission (a CEL rule in the CRD whose message names the field and says what is allowed)
and by pydantic when the operator reads the spec (so the operator refuses what the schema refuses). Patterns
never go into the schema as `pattern`: the API server would answer with the raw regex.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, AliasGenerator, BaseModel, ConfigDict, Field, JsonValue, model_validator
from typing_extensions import Self
from pydantic.alias_generators import to_camel

# Kubernetes' own syntaxes (k8s.io/apimachinery/pkg/util/validation), as RE2/Python regexes.
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
LABEL_KEY = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
             r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
LABEL_KEY_LENGTHS = r"^([^/]{1,253}/)?[^/]{1,63}$"
"""A label key's prefix is at most 253 characters, its name at most 63."""
LABEL_VALUE = r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$"
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
CONFIG_KEY = r"^[-._a-zA-Z0-9]+$"
QUANTITY = r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)(([KMGTPE]i)|[numkMGTPE]|([eE][-+]?[0-9]+))?$"
"""A non-negative Kubernetes quantity (resource.Quantity's grammar without the sign)."""
MODEL_NAME = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"
NO_SPACE = r"^[^\s\p{Z}\p{C}]+$"
"""Non-empty, no whitespace, separators or control characters (RE2; Python checks it with unicodedata)."""
ABSOLUTE_PATH = r"^/"
BACKSTEP = r"(^|/)\.\.(/|$)"

SUBDOMAIN_WORDS = ("lowercase letters, digits, '-' and '.', starting and ending with a letter or digit "
                   "(at most 253 characters)")
LABEL_NAME_WORDS = ("a name of at most 63 letters, digits, '-', '_' or '.' that starts and ends with a letter "
                    "or digit")
LABEL_KEY_WORDS = f"a label key: {LABEL_NAME_WORDS}, optionally after a DNS subdomain prefix and '/'"
LABEL_VALUE_WORDS = ("a label value: empty, or at most 63 letters, digits, '-', '_' or '.' that starts and ends "
                     "with a letter or digit")


def cel(rule: str, message: str, **extra: Any) -> dict[str, Any]:
    """One CEL rule (x-kubernetes-validations entry), checked by the API server at admission."""
    return {"rule": rule, "message": message, **extra}


def lit(text: str) -> str:
    """A CEL string literal holding `text` (a regex, usually)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def label_key_rule(var: str) -> str:
    """CEL: `var` is a label key (syntax and lengths)."""
    return f"{var}.matches({lit(LABEL_KEY)}) && {var}.matches({lit(LABEL_KEY_LENGTHS)})"


def _fullmatch(pattern: str) -> Callable[[str], bool]:
    compiled = re.compile(pattern)
    return lambda value: compiled.fullmatch(value) is not None


def is_label_key(value: str) -> bool:
    return _fullmatch(LABEL_KEY)(value) and _fullmatch(LABEL_KEY_LENGTHS)(value)


def is_label_value(value: str) -> bool:
    return len(value) <= 63 and _fullmatch(LABEL_VALUE)(value)


def has_no_space(value: str) -> bool:
    return bool(value) and not any(c.isspace() or unicodedata.category(c)[0] in "ZC" for c in value)


def is_absolute_path(value: str) -> bool:
    return value.startswith("/") and re.search(BACKSTEP, value) is None


def _refuse_unless(predicate: Callable[[str], bool], message: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not predicate(value):
            raise ValueError(message)
        return value
    return check


def checked(rule: str, message: str, predicate: Callable[[str], bool], *, max_length: int,
            description: str | None = None) -> Any:
    """A string type checked by CEL `rule` at admission and by `predicate` in pydantic, both with `message`;
    `self` in the rule is the string. max_length bounds it (and the rule's cost)."""
    return Annotated[str, AfterValidator(_refuse_unless(predicate, message)),
                     Field(max_length=max_length, description=description,
                           json_schema_extra={"x-kubernetes-validations": [cel(rule, message)]})]


def object_name(field: str, kind: str, *, namespaced: bool = True) -> Any:
    """A field naming a Kubernetes object: a DNS-1123 subdomain of at most 253 characters."""
    where = f"a {kind} in this namespace" if namespaced else f"a {kind}"
    return checked(f"self.matches({lit(DNS1123_SUBDOMAIN)})",
                   f"{field} must be the name of {where}: {SUBDOMAIN_WORDS}",
                   _fullmatch(DNS1123_SUBDOMAIN), max_length=253)


def image_reference(field: str = "image") -> Any:
    return checked(f"self.matches({lit(NO_SPACE)})", f"{field} must be an image reference without spaces",
                   has_no_space, max_length=1024)


def quantity(field: str, examples: str) -> Any:
    return checked(f"self.matches({lit(QUANTITY)})",
                   f"{field} must be a quantity such as {examples} (a number, optionally with a suffix "
                   "m, k, M, G, T, Ki, Mi, Gi or Ti)", _fullmatch(QUANTITY), max_length=64)


def absolute_path(field: str, max_length: int = 4096) -> Any:
    return checked(f"self.startsWith('/') && !self.matches({lit(BACKSTEP)})",
                   f"{field} must be an absolute path (starting with /) without '..' segments",
                   is_absolute_path, max_length=max_length)


# The named string types below are Annotated[str, ...] built by a call, which a type checker cannot read as a
# type: to it they are plain str (and the fields using them str, not Any); pydantic gets the checks.
if TYPE_CHECKING:
    ModelName = str
else:
    ModelName = checked(f"self.matches({lit(MODEL_NAME)})",
                        "model name must start with a letter or digit and hold only letters, digits, '_', '.' and "
                        "'-' (at most 63 characters)", _fullmatch(MODEL_NAME), max_length=63)


def label_key(field: str) -> Any:
    """A map key that must be a label key: the map's own CEL rule checks it (see label_map_field), pydantic here."""
    return Annotated[str, AfterValidator(_refuse_unless(is_label_key, f"{field} keys must be {LABEL_KEY_WORDS}"))]


def label_value(field: str) -> Any:
    return checked(f"self.matches({lit(LABEL_VALUE)})", f"{field} values must be {LABEL_VALUE_WORDS}",
                   is_label_value, max_length=63)


if TYPE_CHECKING:  # str to a type checker, see ModelName
    LabelKey = str
    LabelValue = str
else:
    LabelKey = label_key("nodeSelector")
    LabelValue = label_value("nodeSelector")


def label_map_field(field: str, *, max_items: int = 64, reserved_prefix: str | None = None) -> Any:
    """A map whose keys are label keys (nodeSelector, pod labels and annotations); keys under
    `reserved_prefix` (the operator's own) are refused."""
    bad_keys = f"self.filter(k, !({label_key_rule('k')}))"
    rules: list[JsonValue] = [
        cel(f"self.all(k, {label_key_rule('k')})", f"{field} keys must be {LABEL_KEY_WORDS}",
            messageExpression=lit(f'{field} key "') + f" + {bad_keys}[0] + " + lit('" is not ' + LABEL_KEY_WORDS))]
    if reserved_prefix:
        rules.append(cel(f"self.all(k, !k.startsWith({lit(reserved_prefix)}))",
                         f"{field} keys under {reserved_prefix} are reserved for the operator"))
    return Field({}, max_length=max_items, json_schema_extra={"x-kubernetes-validations": rules})


def node_selector_field() -> Any:
    """nodeSelector: label keys to label values, as a Pod's."""
    return label_map_field("nodeSelector")


EXTENDED_RESOURCE = (r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/"
                     r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
EXTENDED_RESOURCE_WORDS = ("gpuResource must be an extended resource name such as nvidia.com/gpu, "
                           "nvidia.com/mig-1g.10gb or amd.com/gpu: <domain>/<name>, outside kubernetes.io")


def is_extended_resource(value: str) -> bool:
    return _fullmatch(EXTENDED_RESOURCE)(value) and _fullmatch(LABEL_KEY_LENGTHS)(value) and \
        "kubernetes.io/" not in value


if TYPE_CHECKING:  # str to a type checker, see ModelName
    ExtendedResourceName = str
else:
    ExtendedResourceName = checked(
        f"self.matches({lit(EXTENDED_RESOURCE)}) && self.matches({lit(LABEL_KEY_LENGTHS)}) && "
        "!self.contains('kubernetes.io/')", EXTENDED_RESOURCE_WORDS, is_extended_resource, max_length=317)


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields ignored (the CRD schema prunes them)."""

    model_config = ConfigDict(alias_generator=AliasGenerator(alias=to_camel), populate_by_name=True,
                              extra="ignore", use_attribute_docstrings=True)

    def wire(self) -> dict[str, Any]:
        """The object as the API server stores it (aliases, no unset optionals)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class Condition(ApiModel):
    """A Kubernetes-style condition (kstatus conventions)."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


def conditions_field() -> Any:
    """A status conditions list, merged by type (kstatus conventions)."""
    return Field([], json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})


class PersistentVolumeClaimSource(ApiModel):
    claim_name: object_name("claimName", "PersistentVolumeClaim")  # type: ignore[valid-type]
    """Name of a PersistentVolumeClaim in the resource's namespace."""


class HostPathSource(ApiModel):
    path: absolute_path("hostPath.path")  # type: ignore[valid-type]
    """Absolute directory on the node (for single-node and local clusters)."""


class ModelRepository(ApiModel):
    """Where the Triton model repository lives: exactly one of persistentVolumeClaim or hostPath."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("has(self.persistentVolumeClaim) != has(self.hostPath)",
            "set exactly one of persistentVolumeClaim or hostPath"),
    ]})

    persistent_volume_claim: PersistentVolumeClaimSource | None = None
    """A PVC holding the repository (ReadWriteMany when trainers and servers run on different nodes)."""
    host_path: HostPathSource | None = None
    """A node directory holding the repository."""
    mount_path: absolute_path("mountPath", 1024) = "/models"  # type: ignore[valid-type]
    """Where the repository is mounted inside the pods."""


class Resources(ApiModel):
    """Per-pod compute resources; `gpus` becomes a limit of `gpuResource` (nvidia.com/gpu) plus the GPU toleration."""

    gpus: int = Field(0, ge=0, le=16)
    """GPUs per pod: how many of `gpuResource` (nvidia.com/gpu unless set)."""
    gpu_resource: ExtendedResourceName = "nvidia.com/gpu"
    """The extended resource `gpus` counts: nvidia.com/gpu, a MIG profile (nvidia.com/mig-1g.10gb), amd.com/gpu."""
    cpu: quantity("cpu", "500m or 2") | None = None  # type: ignore[valid-type]
    """CPU request and limit, e.g. "2" or "500m"."""
    memory: quantity("memory", "512Mi or 4Gi") | None = None  # type: ignore[valid-type]
    """Memory request and limit, e.g. "4Gi"."""


class Toleration(ApiModel):
    """A Pod toleration, checked as the API server checks a Pod's."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel(f"!has(self.key) || self.key == '' || ({label_key_rule('self.key')})",
            f"toleration key must be {LABEL_KEY_WORDS}"),
        cel("(has(self.key) && self.key != '') || self.operator == 'Exists'",
            "a toleration without key must use operator Exists (it then tolerates every taint)"),
        cel("self.operator != 'Exists' || !has(self.value) || self.value == ''",
            "a toleration with operator Exists must not set value"),
        cel("!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            "tolerationSeconds needs effect NoExecute"),
    ]})

    key: str | None = Field(None, max_length=317)
    """The taint key (a label key); empty with operator Exists tolerates every taint."""
    operator: Literal["Exists", "Equal"] = "Equal"
    value: checked(f"self.matches({lit(LABEL_VALUE)})",  # type: ignore[valid-type]
                   f"toleration value must be {LABEL_VALUE_WORDS}", is_label_value, max_length=63) | None = None
    """The taint value (a label value); only with operator Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None
    """How long a NoExecute taint is tolerated before eviction."""

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.key and not is_label_key(self.key):
            raise ValueError(f"toleration key must be {LABEL_KEY_WORDS}")
        if not self.key and self.operator != "Exists":
            raise ValueError("a toleration without key must use operator Exists (it then tolerates every taint)")
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists must not set value")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds needs effect NoExecute")
        return self


FIELD_PATHS = ("metadata.name", "metadata.namespace", "metadata.uid", "spec.nodeName", "spec.serviceAccountName",
               "status.hostIP", "status.hostIPs", "status.podIP", "status.podIPs")
LABEL_OR_ANNOTATION_PATH = r"^metadata\.(labels|annotations)\['[^']+'\]$"
FIELD_PATH_WORDS = ("fieldRef.fieldPath must be a pod field an env var can take: metadata.name, metadata.namespace, "
                    "metadata.uid, metadata.labels['<key>'], metadata.annotations['<key>'], spec.nodeName, "
                    "spec.serviceAccountName, status.hostIP(s) or status.podIP(s)")
RESOURCE_FIELD = r"^(limits|requests)\.(cpu|memory|ephemeral-storage|hugepages-.+)$"


class ObjectFieldSelector(ApiModel):
    api_version: Literal["v1"] | None = None
    field_path: checked(  # type: ignore[valid-type]
        f"self in [{', '.join(lit(p) for p in FIELD_PATHS)}] || self.matches({lit(LABEL_OR_ANNOTATION_PATH)})",
        FIELD_PATH_WORDS, lambda v: v in FIELD_PATHS or _fullmatch(LABEL_OR_ANNOTATION_PATH)(v), max_length=512)


class ResourceFieldSelector(ApiModel):
    container_name: checked(f"self.matches({lit(DNS1123_LABEL)})",  # type: ignore[valid-type]
                            "resourceFieldRef.containerName must be a container name: lowercase letters, digits "
                            "and '-' (at most 63 characters)", _fullmatch(DNS1123_LABEL), max_length=63) | None = None
    resource: checked(f"self.matches({lit(RESOURCE_FIELD)})",  # type: ignore[valid-type]
                      "resourceFieldRef.resource must be limits.<r> or requests.<r> with <r> one of cpu, memory, "
                      "ephemeral-storage or hugepages-<size>", _fullmatch(RESOURCE_FIELD), max_length=128)
    divisor: quantity("resourceFieldRef.divisor", "1m or 1Mi") | None = None  # type: ignore[valid-type]


def _key_selector(kind: str, field: str) -> Any:
    class KeySelector(ApiModel):
        name: object_name(f"{field}.name", kind)  # type: ignore[valid-type]
        key: checked(f"self.matches({lit(CONFIG_KEY)})",  # type: ignore[valid-type]
                     f"{field}.key must be a {kind} key: letters, digits, '-', '_' and '.' (at most 253 characters)",
                     _fullmatch(CONFIG_KEY), max_length=253)
        optional: bool | None = None

    KeySelector.__name__ = KeySelector.__qualname__ = f"{kind}KeySelector"
    return KeySelector


ConfigMapKeySelector = _key_selector("ConfigMap", "configMapKeyRef")
SecretKeySelector = _key_selector("Secret", "secretKeyRef")
VALUE_SOURCES = ("fieldRef", "resourceFieldRef", "configMapKeyRef", "secretKeyRef")


class EnvVarSource(ApiModel):
    """Where an env var's value comes from: exactly one source, as a Pod's valueFrom."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel(f"[{', '.join(f'has(self.{s})' for s in VALUE_SOURCES)}].filter(x, x).size() == 1",
            "valueFrom must set exactly one of fieldRef, resourceFieldRef, configMapKeyRef or secretKeyRef"),
    ]})

    field_ref: ObjectFieldSelector | None = None
    resource_field_ref: ResourceFieldSelector | None = None
    config_map_key_ref: ConfigMapKeySelector | None = None  # type: ignore[valid-type]
    secret_key_ref: SecretKeySelector | None = None  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _check(self) -> Self:
        sources = [self.field_ref, self.resource_field_ref, self.config_map_key_ref, self.secret_key_ref]
        if sum(s is not None for s in sources) != 1:
            raise ValueError("valueFrom must set exactly one of fieldRef, resourceFieldRef, configMapKeyRef "
                             "or secretKeyRef")
        return self


class EnvVar(ApiModel):
    """An environment variable; `valueFrom` takes the same sources as a Pod's."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("!has(self.valueFrom) || !has(self.value) || self.value == ''",
            "an env var sets value or valueFrom, not both"),
    ]})

    name: checked(f"self.matches({lit(ENV_NAME)})",  # type: ignore[valid-type]
                  "env name must start with a letter, '_', '-' or '.' and hold only letters, digits, '_', '-' "
                  "and '.' (no spaces)", _fullmatch(ENV_NAME), max_length=256)
    value: str | None = Field(None, max_length=32768)
    value_from: EnvVarSource | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.value and self.value_from is not None:
            raise ValueError("an env var sets value or valueFrom, not both")
        return self
