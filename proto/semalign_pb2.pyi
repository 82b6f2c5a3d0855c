from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    COMPLEX64: _ClassVar[DType]
    COMPLEX128: _ClassVar[DType]
    FLOAT32: _ClassVar[DType]
    FLOAT64: _ClassVar[DType]
    INT64: _ClassVar[DType]
    INT32: _ClassVar[DType]
    UINT16: _ClassVar[DType]
    UINT64: _ClassVar[DType]
    FLOAT16: _ClassVar[DType]
    BFLOAT16: _ClassVar[DType]
    COMPLEX_FLOAT16: _ClassVar[DType]
    COMPLEX_BFLOAT16: _ClassVar[DType]

class Layout(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DENSE: _ClassVar[Layout]
    HERMITIAN: _ClassVar[Layout]

class Strategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STRATEGY_UNSPECIFIED: _ClassVar[Strategy]
    FED: _ClassVar[Strategy]
    MULTI_LINK: _ClassVar[Strategy]
    FIRST_K: _ClassVar[Strategy]
    TOP_K: _ClassVar[Strategy]

class BaselineFit(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BASELINE_FIT_UNSPECIFIED: _ClassVar[BaselineFit]
    RECEIVED: _ClassVar[BaselineFit]
    FULL: _ClassVar[BaselineFit]

class RoundProtocol(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUND_PROTOCOL_UNSPECIFIED: _ClassVar[RoundProtocol]
    PAPER: _ClassVar[RoundProtocol]
    COMPACT: _ClassVar[RoundProtocol]

class Aggregation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGGREGATION_UNSPECIFIED: _ClassVar[Aggregation]
    PLAIN: _ClassVar[Aggregation]
    SECURE: _ClassVar[Aggregation]

class Precision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRECISION_UNSPECIFIED: _ClassVar[Precision]
    DOUBLE: _ClassVar[Precision]
    SINGLE: _ClassVar[Precision]

class WirePrecision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WIRE_PRECISION_UNSPECIFIED: _ClassVar[WirePrecision]
    WIRE_NATIVE: _ClassVar[WirePrecision]
    WIRE_FLOAT16: _ClassVar[WirePrecision]
    WIRE_BFLOAT16: _ClassVar[WirePrecision]
DTYPE_UNSPECIFIED: DType
COMPLEX64: DType
COMPLEX128: DType
FLOAT32: DType
FLOAT64: DType
INT64: DType
INT32: DType
UINT16: DType
UINT64: DType
FLOAT16: DType
BFLOAT16: DType
COMPLEX_FLOAT16: DType
COMPLEX_BFLOAT16: DType
DENSE: Layout
HERMITIAN: Layout
STRATEGY_UNSPECIFIED: Strategy
FED: Strategy
MULTI_LINK: Strategy
FIRST_K: Strategy
TOP_K: Strategy
BASELINE_FIT_UNSPECIFIED: BaselineFit
RECEIVED: BaselineFit
FULL: BaselineFit
ROUND_PROTOCOL_UNSPECIFIED: RoundProtocol
PAPER: RoundProtocol
COMPACT: RoundProtocol
AGGREGATION_UNSPECIFIED: Aggregation
PLAIN: Aggregation
SECURE: Aggregation
PRECISION_UNSPECIFIED: Precision
DOUBLE: Precision
SINGLE: Precision
WIRE_PRECISION_UNSPECIFIED: WirePrecision
WIRE_NATIVE: WirePrecision
WIRE_FLOAT16: WirePrecision
WIRE_BFLOAT16: WirePrecision

class Matrix(_message.Message):
    __slots__ = ("shape", "dtype", "data", "layout", "exponent")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    EXPONENT_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    data: bytes
    layout: Layout
    exponent: int
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., data: _Optional[bytes] = ..., layout: _Optional[_Union[Layout, str]] = ..., exponent: _Optional[int] = ...) -> None: ...

class HandshakeRequest(_message.Message):
    __slots__ = ("protocol_version", "user_id", "encoder", "latent_dim", "antennas_rx", "snr_db", "pilot_ids", "csi", "token", "round_protocols", "encryption_key", "masking_key")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    LATENT_DIM_FIELD_NUMBER: _ClassVar[int]
    ANTENNAS_RX_FIELD_NUMBER: _ClassVar[int]
    SNR_DB_FIELD_NUMBER: _ClassVar[int]
    PILOT_IDS_FIELD_NUMBER: _ClassVar[int]
    CSI_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    ROUND_PROTOCOLS_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_KEY_FIELD_NUMBER: _ClassVar[int]
    MASKING_KEY_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    user_id: str
    encoder: str
    latent_dim: int
    antennas_rx: int
    snr_db: float
    pilot_ids: _containers.RepeatedScalarFieldContainer[int]
    csi: Matrix
    token: str
    round_protocols: _containers.RepeatedScalarFieldContainer[RoundProtocol]
    encryption_key: bytes
    masking_key: bytes
    def __init__(self, protocol_version: _Optional[int] = ..., user_id: _Optional[str] = ..., encoder: _Optional[str] = ..., latent_dim: _Optional[int] = ..., antennas_rx: _Optional[int] = ..., snr_db: _Optional[float] = ..., pilot_ids: _Optional[_Iterable[int]] = ..., csi: _Optional[_Union[Matrix, _Mapping]] = ..., token: _Optional[str] = ..., round_protocols: _Optional[_Iterable[_Union[RoundProtocol, str]]] = ..., encryption_key: _Optional[bytes] = ..., masking_key: _Optional[bytes] = ...) -> None: ...

class HandshakeAccept(_message.Message):
    __slots__ = ("session_id", "user_index", "strategy", "channel_uses", "antennas_tx", "rho", "iterations", "power", "pilot_ids", "ap_latent_dim", "channel_aware", "noise_var", "baseline_fit", "protocol_version", "round_protocol", "pilots", "pilot_gram", "precision", "widely_linear", "aggregation", "dp_noise_multiplier", "dp_clip", "wire_precision", "pilot_stream")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    USER_INDEX_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_USES_FIELD_NUMBER: _ClassVar[int]
    ANTENNAS_TX_FIELD_NUMBER: _ClassVar[int]
    RHO_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    POWER_FIELD_NUMBER: _ClassVar[int]
    PILOT_IDS_FIELD_NUMBER: _ClassVar[int]
    AP_LATENT_DIM_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_AWARE_FIELD_NUMBER: _ClassVar[int]
    NOISE_VAR_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    PILOTS_FIELD_NUMBER: _ClassVar[int]
    PILOT_GRAM_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    WIDELY_LINEAR_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    DP_NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    DP_CLIP_FIELD_NUMBER: _ClassVar[int]
    WIRE_PRECISION_FIELD_NUMBER: _ClassVar[int]
    PILOT_STREAM_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    user_index: int
    strategy: Strategy
    channel_uses: int
    antennas_tx: int
    rho: float
    iterations: int
    power: float
    pilot_ids: _containers.RepeatedScalarFieldContainer[int]
    ap_latent_dim: int
    channel_aware: bool
    noise_var: float
    baseline_fit: BaselineFit
    protocol_version: int
    round_protocol: RoundProtocol
    pilots: Matrix
    pilot_gram: Matrix
    precision: Precision
    widely_linear: bool
    aggregation: Aggregation
    dp_noise_multiplier: float
    dp_clip: float
    wire_precision: WirePrecision
    pilot_stream: PilotStream
    def __init__(self, session_id: _Optional[str] = ..., user_index: _Optional[int] = ..., strategy: _Optional[_Union[Strategy, str]] = ..., channel_uses: _Optional[int] = ..., antennas_tx: _Optional[int] = ..., rho: _Optional[float] = ..., iterations: _Optional[int] = ..., power: _Optional[float] = ..., pilot_ids: _Optional[_Iterable[int]] = ..., ap_latent_dim: _Optional[int] = ..., channel_aware: _Optional[bool] = ..., noise_var: _Optional[float] = ..., baseline_fit: _Optional[_Union[BaselineFit, str]] = ..., protocol_version: _Optional[int] = ..., round_protocol: _Optional[_Union[RoundProtocol, str]] = ..., pilots: _Optional[_Union[Matrix, _Mapping]] = ..., pilot_gram: _Optional[_Union[Matrix, _Mapping]] = ..., precision: _Optional[_Union[Precision, str]] = ..., widely_linear: _Optional[bool] = ..., aggregation: _Optional[_Union[Aggregation, str]] = ..., dp_noise_multiplier: _Optional[float] = ..., dp_clip: _Optional[float] = ..., wire_precision: _Optional[_Union[WirePrecision, str]] = ..., pilot_stream: _Optional[_Union[PilotStream, _Mapping]] = ...) -> None: ...

class RoundBroadcast(_message.Message):
    __slots__ = ("session_id", "round", "symbols", "final")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    round: int
    symbols: Matrix
    final: bool
    def __init__(self, session_id: _Optional[str] = ..., round: _Optional[int] = ..., symbols: _Optional[_Union[Matrix, _Mapping]] = ..., final: _Optional[bool] = ...) -> None: ...

class RoundUpload(_message.Message):
    __slots__ = ("session_id", "round", "a", "p", "squared_error", "noise_term")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    A_FIELD_NUMBER: _ClassVar[int]
    P_FIELD_NUMBER: _ClassVar[int]
    SQUARED_ERROR_FIELD_NUMBER: _ClassVar[int]
    NOISE_TERM_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    round: int
    a: Matrix
    p: Matrix
    squared_error: float
    noise_term: float
    def __init__(self, session_id: _Optional[str] = ..., round: _Optional[int] = ..., a: _Optional[_Union[Matrix, _Mapping]] = ..., p: _Optional[_Union[Matrix, _Mapping]] = ..., squared_error: _Optional[float] = ..., noise_term: _Optional[float] = ...) -> None: ...

class CompactBroadcast(_message.Message):
    __slots__ = ("session_id", "round", "pre_equalizer", "final", "consensus_offset", "participants")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PRE_EQUALIZER_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    CONSENSUS_OFFSET_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    round: int
    pre_equalizer: Matrix
    final: bool
    consensus_offset: Matrix
    participants: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, session_id: _Optional[str] = ..., round: _Optional[int] = ..., pre_equalizer: _Optional[_Union[Matrix, _Mapping]] = ..., final: _Optional[bool] = ..., consensus_offset: _Optional[_Union[Matrix, _Mapping]] = ..., participants: _Optional[_Iterable[int]] = ...) -> None: ...

class SecureParticipant(_message.Message):
    __slots__ = ("index", "encryption_key", "masking_key", "round_masking_keys")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_KEY_FIELD_NUMBER: _ClassVar[int]
    MASKING_KEY_FIELD_NUMBER: _ClassVar[int]
    ROUND_MASKING_KEYS_FIELD_NUMBER: _ClassVar[int]
    index: int
    encryption_key: bytes
    masking_key: bytes
    round_masking_keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, index: _Optional[int] = ..., encryption_key: _Optional[bytes] = ..., masking_key: _Optional[bytes] = ..., round_masking_keys: _Optional[_Iterable[bytes]] = ...) -> None: ...

class SecureSetup(_message.Message):
    __slots__ = ("session_id", "threshold", "participants", "double_masking")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_MASKING_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    threshold: int
    participants: _containers.RepeatedCompositeFieldContainer[SecureParticipant]
    double_masking: bool
    def __init__(self, session_id: _Optional[str] = ..., threshold: _Optional[int] = ..., participants: _Optional[_Iterable[_Union[SecureParticipant, _Mapping]]] = ..., double_masking: _Optional[bool] = ...) -> None: ...

class SealedShare(_message.Message):
    __slots__ = ("sender", "recipient", "ciphertext")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    sender: int
    recipient: int
    ciphertext: bytes
    def __init__(self, sender: _Optional[int] = ..., recipient: _Optional[int] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class SecureShares(_message.Message):
    __slots__ = ("session_id", "shares", "round_masking_keys", "self_mask_keys")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    ROUND_MASKING_KEYS_FIELD_NUMBER: _ClassVar[int]
    SELF_MASK_KEYS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    shares: _containers.RepeatedCompositeFieldContainer[SealedShare]
    round_masking_keys: _containers.RepeatedScalarFieldContainer[bytes]
    self_mask_keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, session_id: _Optional[str] = ..., shares: _Optional[_Iterable[_Union[SealedShare, _Mapping]]] = ..., round_masking_keys: _Optional[_Iterable[bytes]] = ..., self_mask_keys: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ShareDelivery(_message.Message):
    __slots__ = ("session_id", "shares", "participants")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    shares: _containers.RepeatedCompositeFieldContainer[SealedShare]
    participants: _containers.RepeatedCompositeFieldContainer[SecureParticipant]
    def __init__(self, session_id: _Optional[str] = ..., shares: _Optional[_Iterable[_Union[SealedShare, _Mapping]]] = ..., participants: _Optional[_Iterable[_Union[SecureParticipant, _Mapping]]] = ...) -> None: ...

class SecureUpload(_message.Message):
    __slots__ = ("session_id", "round", "masked")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    MASKED_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    round: int
    masked: Matrix
    def __init__(self, session_id: _Optional[str] = ..., round: _Optional[int] = ..., masked: _Optional[_Union[Matrix, _Mapping]] = ...) -> None: ...

class UnmaskRequest(_message.Message):
    __slots__ = ("session_id", "round", "dropped", "arrived")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    ARRIVED_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    round: int
    dropped: _containers.RepeatedScalarFieldContainer[int]
    arrived: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, session_id: _Optional[str] = ..., round: _Optional[int] = ..., dropped: _Optional[_Iterable[int]] = ..., arrived: _Optional[_Iterable[int]] = ...) -> None: ...

class RevealedShare(_message.Message):
    __slots__ = ("owner", "share")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    owner: int
    share: bytes
    def __init__(self, owner: _Optional[int] = ..., share: _Optional[bytes] = ...) -> None: ...

class UnmaskShares(_message.Message):
    __slots__ = ("session_id", "round", "shares", "self_mask_shares")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    SELF_MASK_SHARES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    round: int
    shares: _containers.RepeatedCompositeFieldContainer[RevealedShare]
    self_mask_shares: _containers.RepeatedCompositeFieldContainer[RevealedShare]
    def __init__(self, session_id: _Optional[str] = ..., round: _Optional[int] = ..., shares: _Optional[_Iterable[_Union[RevealedShare, _Mapping]]] = ..., self_mask_shares: _Optional[_Iterable[_Union[RevealedShare, _Mapping]]] = ...) -> None: ...

class CompactUpload(_message.Message):
    __slots__ = ("session_id", "round", "a", "cross", "squared_error", "noise_term")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    A_FIELD_NUMBER: _ClassVar[int]
    CROSS_FIELD_NUMBER: _ClassVar[int]
    SQUARED_ERROR_FIELD_NUMBER: _ClassVar[int]
    NOISE_TERM_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    round: int
    a: Matrix
    cross: Matrix
    squared_error: float
    noise_term: float
    def __init__(self, session_id: _Optional[str] = ..., round: _Optional[int] = ..., a: _Optional[_Union[Matrix, _Mapping]] = ..., cross: _Optional[_Union[Matrix, _Mapping]] = ..., squared_error: _Optional[float] = ..., noise_term: _Optional[float] = ...) -> None: ...

class PilotTransmission(_message.Message):
    __slots__ = ("session_id", "symbols", "indices", "reference", "whitening_mean", "whitening_factor", "precoder")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    WHITENING_MEAN_FIELD_NUMBER: _ClassVar[int]
    WHITENING_FACTOR_FIELD_NUMBER: _ClassVar[int]
    PRECODER_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    symbols: Matrix
    indices: Matrix
    reference: Matrix
    whitening_mean: Matrix
    whitening_factor: Matrix
    precoder: Matrix
    def __init__(self, session_id: _Optional[str] = ..., symbols: _Optional[_Union[Matrix, _Mapping]] = ..., indices: _Optional[_Union[Matrix, _Mapping]] = ..., reference: _Optional[_Union[Matrix, _Mapping]] = ..., whitening_mean: _Optional[_Union[Matrix, _Mapping]] = ..., whitening_factor: _Optional[_Union[Matrix, _Mapping]] = ..., precoder: _Optional[_Union[Matrix, _Mapping]] = ...) -> None: ...

class EvaluationRequest(_message.Message):
    __slots__ = ("session_id", "symbols", "indices", "sample_ids")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_IDS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    symbols: Matrix
    indices: Matrix
    sample_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, session_id: _Optional[str] = ..., symbols: _Optional[_Union[Matrix, _Mapping]] = ..., indices: _Optional[_Union[Matrix, _Mapping]] = ..., sample_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class EvaluationReport(_message.Message):
    __slots__ = ("session_id", "accuracy", "native_accuracy", "mse", "mse_whitened", "samples")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    NATIVE_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    MSE_FIELD_NUMBER: _ClassVar[int]
    MSE_WHITENED_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    accuracy: float
    native_accuracy: float
    mse: float
    mse_whitened: float
    samples: int
    def __init__(self, session_id: _Optional[str] = ..., accuracy: _Optional[float] = ..., native_accuracy: _Optional[float] = ..., mse: _Optional[float] = ..., mse_whitened: _Optional[float] = ..., samples: _Optional[int] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("session_id", "round", "squared_error", "noise_term")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SQUARED_ERROR_FIELD_NUMBER: _ClassVar[int]
    NOISE_TERM_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    round: int
    squared_error: float
    noise_term: float
    def __init__(self, session_id: _Optional[str] = ..., round: _Optional[int] = ..., squared_error: _Optional[float] = ..., noise_term: _Optional[float] = ...) -> None: ...

class SessionEnd(_message.Message):
    __slots__ = ("session_id", "reason")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    reason: str
    def __init__(self, session_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ProtocolError(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    def __init__(self, message: _Optional[str] = ...) -> None: ...

class UserMessage(_message.Message):
    __slots__ = ("handshake", "upload", "ack", "report", "error", "compact_upload", "secure_shares", "secure_upload", "unmask_shares")
    HANDSHAKE_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    COMPACT_UPLOAD_FIELD_NUMBER: _ClassVar[int]
    SECURE_SHARES_FIELD_NUMBER: _ClassVar[int]
    SECURE_UPLOAD_FIELD_NUMBER: _ClassVar[int]
    UNMASK_SHARES_FIELD_NUMBER: _ClassVar[int]
    handshake: HandshakeRequest
    upload: RoundUpload
    ack: Ack
    report: EvaluationReport
    error: ProtocolError
    compact_upload: CompactUpload
    secure_shares: SecureShares
    secure_upload: SecureUpload
    unmask_shares: UnmaskShares
    def __init__(self, handshake: _Optional[_Union[HandshakeRequest, _Mapping]] = ..., upload: _Optional[_Union[RoundUpload, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., report: _Optional[_Union[EvaluationReport, _Mapping]] = ..., error: _Optional[_Union[ProtocolError, _Mapping]] = ..., compact_upload: _Optional[_Union[CompactUpload, _Mapping]] = ..., secure_shares: _Optional[_Union[SecureShares, _Mapping]] = ..., secure_upload: _Optional[_Union[SecureUpload, _Mapping]] = ..., unmask_shares: _Optional[_Union[UnmaskShares, _Mapping]] = ...) -> None: ...

class ApMessage(_message.Message):
    __slots__ = ("accept", "broadcast", "pilots", "evaluate", "end", "error", "compact_broadcast", "secure_setup", "share_delivery", "unmask_request", "pilot_chunk")
    ACCEPT_FIELD_NUMBER: _ClassVar[int]
    BROADCAST_FIELD_NUMBER: _ClassVar[int]
    PILOTS_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    COMPACT_BROADCAST_FIELD_NUMBER: _ClassVar[int]
    SECURE_SETUP_FIELD_NUMBER: _ClassVar[int]
    SHARE_DELIVERY_FIELD_NUMBER: _ClassVar[int]
    UNMASK_REQUEST_FIELD_NUMBER: _ClassVar[int]
    PILOT_CHUNK_FIELD_NUMBER: _ClassVar[int]
    accept: HandshakeAccept
    broadcast: RoundBroadcast
    pilots: PilotTransmission
    evaluate: EvaluationRequest
    end: SessionEnd
    error: ProtocolError
    compact_broadcast: CompactBroadcast
    secure_setup: SecureSetup
    share_delivery: ShareDelivery
    unmask_request: UnmaskRequest
    pilot_chunk: PilotChunk
    def __init__(self, accept: _Optional[_Union[HandshakeAccept, _Mapping]] = ..., broadcast: _Optional[_Union[RoundBroadcast, _Mapping]] = ..., pilots: _Optional[_Union[PilotTransmission, _Mapping]] = ..., evaluate: _Optional[_Union[EvaluationRequest, _Mapping]] = ..., end: _Optional[_Union[SessionEnd, _Mapping]] = ..., error: _Optional[_Union[ProtocolError, _Mapping]] = ..., compact_broadcast: _Optional[_Union[CompactBroadcast, _Mapping]] = ..., secure_setup: _Optional[_Union[SecureSetup, _Mapping]] = ..., share_delivery: _Optional[_Union[ShareDelivery, _Mapping]] = ..., unmask_request: _Optional[_Union[UnmaskRequest, _Mapping]] = ..., pilot_chunk: _Optional[_Union[PilotChunk, _Mapping]] = ...) -> None: ...

class PilotStream(_message.Message):
    __slots__ = ("total_bytes", "chunks", "rows_per_chunk")
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    ROWS_PER_CHUNK_FIELD_NUMBER: _ClassVar[int]
    total_bytes: int
    chunks: int
    rows_per_chunk: int
    def __init__(self, total_bytes: _Optional[int] = ..., chunks: _Optional[int] = ..., rows_per_chunk: _Optional[int] = ...) -> None: ...

class PilotChunk(_message.Message):
    __slots__ = ("session_id", "index", "data")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    index: int
    data: bytes
    def __init__(self, session_id: _Optional[str] = ..., index: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...
