//! A write-only protobuf encoder for the handful of ONNX messages the exporter
//! emits, with field numbers from `onnx/onnx.proto`:
//!
//! | message              | fields written                                                    |
//! |----------------------|-------------------------------------------------------------------|
//! | `ModelProto`         | ir_version 1, producer_name 2, producer_version 3, doc_string 6, graph 7, opset_import 8 |
//! | `OperatorSetIdProto` | domain 1, version 2                                               |
//! | `GraphProto`         | node 1, name 2, initializer 5, input 11, output 12                |
//! | `NodeProto`          | input 1, output 2, name 3, op_type 4, attribute 5                 |
//! | `AttributeProto`     | name 1, f 2, i 3, t 5, ints 8, type 20                            |
//! | `TensorProto`        | dims 1, data_type 2, name 8, raw_data 9                           |
//! | `ValueInfoProto`     | name 1, type 2                                                    |
//! | `TypeProto`          | tensor_type 1 (`Tensor`: elem_type 1, shape 2)                    |
//! | `TensorShapeProto`   | dim 1 (`Dimension`: dim_value 1, dim_param 2)                     |
//!
//! onnx.proto is proto2, so repeated integers (`dims`, `ints`) are written
//! unpacked, one tag per value, as the reference serialiser does. Tensor
//! values go in `raw_data` as little-endian bytes. A nested message is
//! encoded into its own buffer and copied into its parent's, so peak memory
//! is a small multiple of the weights; protobuf caps a message at 2 GiB,
//! which the caller checks.

/// `TensorProto.DataType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    Float = 1,
    Int32 = 6,
    Int64 = 7,
}

/// `AttributeProto.AttributeType`.
#[derive(Clone, Copy)]
enum AttributeType {
    Float = 1,
    Int = 2,
    Tensor = 4,
    Ints = 7,
}

/// Protobuf wire types.
const VARINT: u32 = 0;
const LENGTH_DELIMITED: u32 = 2;
const FIXED32: u32 = 5;

/// One message under construction.
#[derive(Default)]
struct Message(Vec<u8>);

impl Message {
    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.0.push((value as u8 & 0x7f) | 0x80);
            value >>= 7;
        }
        self.0.push(value as u8);
    }

    fn tag(&mut self, field: u32, wire_type: u32) {
        self.varint(u64::from(field << 3 | wire_type));
    }

    /// `int64`/`int32`/enum: negative values take ten bytes (two's complement), as protobuf requires.
    fn int(&mut self, field: u32, value: i64) {
        self.tag(field, VARINT);
        self.varint(value as u64);
    }

    fn float(&mut self, field: u32, value: f32) {
        self.tag(field, FIXED32);
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    fn bytes(&mut self, field: u32, bytes: &[u8]) {
        self.tag(field, LENGTH_DELIMITED);
        self.varint(bytes.len() as u64);
        self.0.extend_from_slice(bytes);
    }

    fn string(&mut self, field: u32, text: &str) {
        self.bytes(field, text.as_bytes());
    }

    fn message(&mut self, field: u32, message: Message) {
        self.bytes(field, &message.0);
    }
}

/// A tensor's values: borrowed weights or small owned constants.
pub enum Values<'a> {
    F32(&'a [f32]),
    OwnedF32(Vec<f32>),
    I32(Vec<i32>),
    I64(Vec<i64>),
}

impl Values<'_> {
    fn data_type(&self) -> DataType {
        match self {
            Values::F32(_) | Values::OwnedF32(_) => DataType::Float,
            Values::I32(_) => DataType::Int32,
            Values::I64(_) => DataType::Int64,
        }
    }

    fn raw_bytes(&self) -> Vec<u8> {
        match self {
            Values::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Values::OwnedF32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Values::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Values::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

/// `TensorProto`.
pub struct TensorValue<'a> {
    pub name: String,
    pub dims: Vec<i64>,
    pub values: Values<'a>,
}

impl TensorValue<'_> {
    fn encode(&self) -> Message {
        let mut m = Message::default();
        for &d in &self.dims {
            m.int(1, d);
        }
        m.int(2, self.values.data_type() as i64);
        if !self.name.is_empty() {
            m.string(8, &self.name);
        }
        m.bytes(9, &self.values.raw_bytes());
        m
    }
}

pub enum AttributeValue<'a> {
    Float(f32),
    Int(i64),
    Ints(Vec<i64>),
    Tensor(TensorValue<'a>),
}

/// `AttributeProto`.
pub struct Attribute<'a> {
    pub name: &'static str,
    pub value: AttributeValue<'a>,
}

impl Attribute<'_> {
    fn encode(&self) -> Message {
        let mut m = Message::default();
        m.string(1, self.name);
        let kind = match &self.value {
            AttributeValue::Float(f) => {
                m.float(2, *f);
                AttributeType::Float
            }
            AttributeValue::Int(i) => {
                m.int(3, *i);
                AttributeType::Int
            }
            AttributeValue::Tensor(t) => {
                m.message(5, t.encode());
                AttributeType::Tensor
            }
            AttributeValue::Ints(values) => {
                for &v in values {
                    m.int(8, v);
                }
                AttributeType::Ints
            }
        };
        m.int(20, kind as i64);
        m
    }
}

/// `NodeProto` (default domain).
pub struct Node<'a> {
    pub op_type: &'static str,
    pub name: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attributes: Vec<Attribute<'a>>,
}

impl Node<'_> {
    fn encode(&self) -> Message {
        let mut m = Message::default();
        for input in &self.inputs {
            m.string(1, input);
        }
        for output in &self.outputs {
            m.string(2, output);
        }
        m.string(3, &self.name);
        m.string(4, self.op_type);
        for attribute in &self.attributes {
            m.message(5, attribute.encode());
        }
        m
    }
}

/// One dimension of a graph input or output.
pub enum Dim {
    Fixed(i64),
    Symbolic(&'static str),
}

/// `ValueInfoProto` for a tensor.
pub struct ValueInfo {
    pub name: &'static str,
    pub data_type: DataType,
    pub dims: Vec<Dim>,
}

impl ValueInfo {
    fn encode(&self) -> Message {
        let mut shape = Message::default();
        for dim in &self.dims {
            let mut d = Message::default();
            match dim {
                Dim::Fixed(v) => d.int(1, *v),
                Dim::Symbolic(name) => d.string(2, name),
            }
            shape.message(1, d);
        }
        let mut tensor_type = Message::default();
        tensor_type.int(1, self.data_type as i64);
        tensor_type.message(2, shape);
        let mut type_proto = Message::default();
        type_proto.message(1, tensor_type);
        let mut m = Message::default();
        m.string(1, self.name);
        m.message(2, type_proto);
        m
    }
}

/// `GraphProto`.
pub struct Graph<'a> {
    pub name: &'static str,
    pub nodes: Vec<Node<'a>>,
    pub initializers: Vec<TensorValue<'a>>,
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
}

impl Graph<'_> {
    fn encode(&self) -> Message {
        let mut m = Message::default();
        for node in &self.nodes {
            m.message(1, node.encode());
        }
        m.string(2, self.name);
        for tensor in &self.initializers {
            m.message(5, tensor.encode());
        }
        for input in &self.inputs {
            m.message(11, input.encode());
        }
        for output in &self.outputs {
            m.message(12, output.encode());
        }
        m
    }
}

/// `ModelProto` importing one version of the default (`ai.onnx`) operator set.
pub struct Model<'a> {
    pub ir_version: i64,
    pub opset: i64,
    pub producer_name: &'static str,
    pub producer_version: &'static str,
    pub doc_string: String,
    pub graph: Graph<'a>,
}

impl Model<'_> {
    pub fn encode(&self) -> Vec<u8> {
        let mut m = Message::default();
        m.int(1, self.ir_version);
        m.string(2, self.producer_name);
        m.string(3, self.producer_version);
        m.string(6, &self.doc_string);
        m.message(7, self.graph.encode());
        let mut opset = Message::default();
        opset.string(1, "");
        opset.int(2, self.opset);
        m.message(8, opset);
        m.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_follow_the_protobuf_encoding() {
        let encode = |v: i64| {
            let mut m = Message::default();
            m.int(1, v);
            m.0
        };
        assert_eq!(encode(0), [0x08, 0x00]);
        assert_eq!(encode(1), [0x08, 0x01]);
        assert_eq!(encode(300), [0x08, 0xac, 0x02]);
        // Negative int64: ten bytes of two's complement.
        assert_eq!(
            encode(-1),
            [
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
            ]
        );
    }

    #[test]
    fn messages_match_reference_bytes() {
        // Fields in number order, as protobuf's own serialisers write them:
        // name (1), i (3), type (20, a two-byte tag).
        let attribute = Attribute {
            name: "axis",
            value: AttributeValue::Int(-1),
        };
        let mut expected = vec![0x0a, 4, b'a', b'x', b'i', b's', 0x18];
        expected.extend([0xff; 9]);
        expected.push(0x01);
        expected.extend([0xa0, 0x01, 0x02]);
        assert_eq!(attribute.encode().0, expected);

        let tensor = TensorValue {
            name: "w".into(),
            dims: vec![2],
            values: Values::F32(&[1.0, -2.0]),
        };
        let mut expected = vec![0x08, 0x02, 0x10, 0x01, 0x42, 0x01, b'w', 0x4a, 0x08];
        expected.extend(1.0f32.to_le_bytes());
        expected.extend((-2.0f32).to_le_bytes());
        assert_eq!(tensor.encode().0, expected);

        let info = ValueInfo {
            name: "x",
            data_type: DataType::Float,
            dims: vec![Dim::Symbolic("n"), Dim::Fixed(3)],
        };
        // name; type { tensor_type { elem_type 1; shape { dim {param "n"} dim {value 3} } } }
        let expected = [
            0x0a, 0x01, b'x', 0x12, 0x0f, 0x0a, 0x0d, 0x08, 0x01, 0x12, 0x09, 0x0a, 0x03, 0x12,
            0x01, b'n', 0x0a, 0x02, 0x08, 0x03,
        ];
        assert_eq!(info.encode().0, expected);
    }
}
