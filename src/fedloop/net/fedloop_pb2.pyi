from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_KIND_UNSPECIFIED: _ClassVar[TaskKind]
    TASK_FIT: _ClassVar[TaskKind]
    TASK_EVALUATE: _ClassVar[TaskKind]
    TASK_SECAGG: _ClassVar[TaskKind]

class PollStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POLL_STATUS_UNSPECIFIED: _ClassVar[PollStatus]
    POLL_TASK: _ClassVar[PollStatus]
    POLL_WAIT: _ClassVar[PollStatus]
    POLL_DONE: _ClassVar[PollStatus]
    POLL_FAILED: _ClassVar[PollStatus]

class ReplyKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPLY_KIND_UNSPECIFIED: _ClassVar[ReplyKind]
    REPLY_FIT: _ClassVar[ReplyKind]
    REPLY_EVALUATE: _ClassVar[ReplyKind]
    REPLY_FAILURE: _ClassVar[ReplyKind]
    REPLY_MESSAGE: _ClassVar[ReplyKind]
TASK_KIND_UNSPECIFIED: TaskKind
TASK_FIT: TaskKind
TASK_EVALUATE: TaskKind
TASK_SECAGG: TaskKind
POLL_STATUS_UNSPECIFIED: PollStatus
POLL_TASK: PollStatus
POLL_WAIT: PollStatus
POLL_DONE: PollStatus
POLL_FAILED: PollStatus
REPLY_KIND_UNSPECIFIED: ReplyKind
REPLY_FIT: ReplyKind
REPLY_EVALUATE: ReplyKind
REPLY_FAILURE: ReplyKind
REPLY_MESSAGE: ReplyKind

class HelloRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("num_examples", "num_test", "input_shape", "num_classes", "model_digest")
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    NUM_TEST_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    MODEL_DIGEST_FIELD_NUMBER: _ClassVar[int]
    num_examples: int
    num_test: int
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    num_classes: int
    model_digest: str
    def __init__(self, num_examples: _Optional[int] = ..., num_test: _Optional[int] = ..., input_shape: _Optional[_Iterable[int]] = ..., num_classes: _Optional[int] = ..., model_digest: _Optional[str] = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("run", "settings_json", "client_id", "protocol")
    RUN_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_JSON_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    run: str
    settings_json: str
    client_id: int
    protocol: int
    def __init__(self, run: _Optional[str] = ..., settings_json: _Optional[str] = ..., client_id: _Optional[int] = ..., protocol: _Optional[int] = ...) -> None: ...

class TaskRequest(_message.Message):
    __slots__ = ("after_seq", "working_on")
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    WORKING_ON_FIELD_NUMBER: _ClassVar[int]
    after_seq: int
    working_on: int
    def __init__(self, after_seq: _Optional[int] = ..., working_on: _Optional[int] = ...) -> None: ...

class ConfigValue(_message.Message):
    __slots__ = ("flag", "integer", "number", "text", "data")
    FLAG_FIELD_NUMBER: _ClassVar[int]
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    flag: bool
    integer: int
    number: float
    text: str
    data: bytes
    def __init__(self, flag: _Optional[bool] = ..., integer: _Optional[int] = ..., number: _Optional[float] = ..., text: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class TaskHeader(_message.Message):
    __slots__ = ("status", "round", "kind", "seed", "size", "seq", "version", "stage", "config", "reason")
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ConfigValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ConfigValue, _Mapping]] = ...) -> None: ...
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    status: PollStatus
    round: int
    kind: TaskKind
    seed: int
    size: int
    seq: int
    version: int
    stage: str
    config: _containers.MessageMap[str, ConfigValue]
    reason: str
    def __init__(self, status: _Optional[_Union[PollStatus, str]] = ..., round: _Optional[int] = ..., kind: _Optional[_Union[TaskKind, str]] = ..., seed: _Optional[int] = ..., size: _Optional[int] = ..., seq: _Optional[int] = ..., version: _Optional[int] = ..., stage: _Optional[str] = ..., config: _Optional[_Mapping[str, ConfigValue]] = ..., reason: _Optional[str] = ...) -> None: ...

class TaskChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: TaskHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[TaskHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ReplyHeader(_message.Message):
    __slots__ = ("round", "kind", "num_examples", "metrics", "reason", "size", "seq")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ROUND_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    round: int
    kind: ReplyKind
    num_examples: int
    metrics: _containers.ScalarMap[str, float]
    reason: str
    size: int
    seq: int
    def __init__(self, round: _Optional[int] = ..., kind: _Optional[_Union[ReplyKind, str]] = ..., num_examples: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., reason: _Optional[str] = ..., size: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class ReplyChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: ReplyHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[ReplyHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class PutAck(_message.Message):
    __slots__ = ("accepted", "reason")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    def __init__(self, accepted: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...
