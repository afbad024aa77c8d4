//! A small reader of the kernel's BTF: just enough to find struct member
//! offsets and sizes.
//!
//! aya has no CO-RE for Rust programs and keeps aya-obj's member offsets
//! private, so the agent reads `/sys/kernel/btf/vmlinux` itself at start and
//! hands the offsets to the probe. Format: `Documentation/bpf/btf.rst`.

use std::path::Path;

use thiserror::Error;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Guards against reference cycles in malformed BTF.
const MAX_TYPE_CHAIN: usize = 32;

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("BTF has no struct {0}")]
    NoSuchStruct(String),
    #[error("BTF struct {struct_name} has no member {member}")]
    NoSuchMember { struct_name: String, member: String },
    #[error("BTF member {struct_name}.{member} is a bitfield; byte offset needed")]
    Bitfield { struct_name: String, member: String },
    #[error("BTF member {struct_name}.{member} is not a struct or union, cannot look inside")]
    NotComposite { struct_name: String, member: String },
}

/// Where a member lies inside its outermost struct.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberLocation {
    pub offset: u32,
    pub size: u32,
}

#[derive(Clone, Debug)]
struct Member {
    name_off: u32,
    type_id: u32,
    bit_offset: u32,
    bitfield_size: u32,
}

#[derive(Clone, Debug)]
struct Type {
    name_off: u32,
    kind: u32,
    /// Size in bytes, or the referenced type id, depending on kind.
    size_or_type: u32,
    members: Vec<Member>,
    array: Option<(u32, u32)>,
    /// Parameters of a FUNC_PROTO.
    params: usize,
}

pub struct Btf {
    /// Index = type id; id 0 is `void`.
    types: Vec<Type>,
    strings: Vec<u8>,
}

impl Btf {
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let bytes = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&bytes)
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, BtfError> {
        let mut header = Reader::new(bytes);
        if header.u16()? != MAGIC {
            return Err(BtfError::Malformed(
                "bad magic (not BTF, or foreign byte order)",
            ));
        }
        let _version = header.u8()?;
        let _flags = header.u8()?;
        let header_len = header.u32()? as usize;
        let type_off = header.u32()? as usize;
        let type_len = header.u32()? as usize;
        let str_off = header.u32()? as usize;
        let str_len = header.u32()? as usize;
        if header_len < HEADER_LEN {
            return Err(BtfError::Malformed("header too short"));
        }
        let section = |off: usize, len: usize| {
            header_len
                .checked_add(off)
                .and_then(|start| Some((start, start.checked_add(len)?)))
                .and_then(|(start, end)| bytes.get(start..end))
                .ok_or(BtfError::Malformed("section out of bounds"))
        };
        let type_section = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?.to_vec();

        let mut types = vec![Type {
            name_off: 0,
            kind: 0,
            size_or_type: 0,
            members: Vec::new(),
            array: None,
            params: 0,
        }];
        let mut reader = Reader::new(type_section);
        while !reader.is_empty() {
            types.push(read_type(&mut reader)?);
        }
        Ok(Self { types, strings })
    }

    /// Locates `path` (member names, outermost first) inside `struct_name`,
    /// looking through anonymous structs and unions as C does.
    pub fn member(&self, struct_name: &str, path: &[&str]) -> Result<MemberLocation, BtfError> {
        let mut type_id = self.struct_id(struct_name)?;
        let mut offset_bits = 0u64;
        let mut member_type = type_id;
        for (depth, name) in path.iter().enumerate() {
            if depth > 0 {
                type_id = self.resolve(member_type)?;
                let kind = self.get(type_id)?.kind;
                if kind != KIND_STRUCT && kind != KIND_UNION {
                    return Err(BtfError::NotComposite {
                        struct_name: struct_name.to_owned(),
                        member: path[..depth].join("."),
                    });
                }
            }
            let (bits, found) =
                self.find_member(type_id, name, 0)?
                    .ok_or_else(|| BtfError::NoSuchMember {
                        struct_name: struct_name.to_owned(),
                        member: path[..=depth].join("."),
                    })?;
            if found.bitfield_size != 0 || bits % 8 != 0 {
                return Err(BtfError::Bitfield {
                    struct_name: struct_name.to_owned(),
                    member: path[..=depth].join("."),
                });
            }
            offset_bits += bits;
            member_type = found.type_id;
        }
        let offset = u32::try_from(offset_bits / 8)
            .map_err(|_| BtfError::Malformed("member offset overflows"))?;
        Ok(MemberLocation {
            offset,
            size: self.size_of(member_type)?,
        })
    }

    /// Whether the kernel defines a type of this name (any kind).
    /// How many parameters kernel function `name` takes, from its prototype:
    /// an fexit program finds the return value right after them.
    pub fn function_params(&self, name: &str) -> Option<usize> {
        let function = self
            .types
            .iter()
            .find(|t| t.kind == KIND_FUNC && self.name(t.name_off) == Some(name))?;
        let prototype = self.types.get(function.size_or_type as usize)?;
        (prototype.kind == KIND_FUNC_PROTO).then_some(prototype.params)
    }

    pub fn has_type_named(&self, name: &str) -> bool {
        self.types
            .iter()
            .any(|t| self.name(t.name_off) == Some(name))
    }

    fn struct_id(&self, name: &str) -> Result<u32, BtfError> {
        self.types
            .iter()
            .position(|t| t.kind == KIND_STRUCT && self.name(t.name_off) == Some(name))
            .map(|id| id as u32)
            .ok_or_else(|| BtfError::NoSuchStruct(name.to_owned()))
    }

    /// Depth-first through anonymous members; returns the bit offset from
    /// the start of `type_id` and the member.
    fn find_member(
        &self,
        type_id: u32,
        name: &str,
        depth: usize,
    ) -> Result<Option<(u64, &Member)>, BtfError> {
        if depth > MAX_TYPE_CHAIN {
            return Err(BtfError::Malformed("anonymous members nest too deep"));
        }
        for member in &self.get(type_id)?.members {
            let member_name = self.name(member.name_off).unwrap_or("");
            if member_name == name {
                return Ok(Some((u64::from(member.bit_offset), member)));
            }
            if member_name.is_empty() {
                let inner = self.resolve(member.type_id)?;
                let kind = self.get(inner)?.kind;
                if (kind == KIND_STRUCT || kind == KIND_UNION)
                    && let Some((bits, found)) = self.find_member(inner, name, depth + 1)?
                {
                    return Ok(Some((u64::from(member.bit_offset) + bits, found)));
                }
            }
        }
        Ok(None)
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut type_id: u32) -> Result<u32, BtfError> {
        for _ in 0..MAX_TYPE_CHAIN {
            let t = self.get(type_id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    type_id = t.size_or_type;
                }
                _ => return Ok(type_id),
            }
        }
        Err(BtfError::Malformed("type reference chain too long"))
    }

    fn size_of(&self, type_id: u32) -> Result<u32, BtfError> {
        let t = self.get(self.resolve(type_id)?)?;
        match t.kind {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                Ok(t.size_or_type)
            }
            KIND_PTR => Ok(std::mem::size_of::<usize>() as u32),
            KIND_ARRAY => {
                let (elem, count) = t.array.ok_or(BtfError::Malformed("array without data"))?;
                self.size_of(elem)?
                    .checked_mul(count)
                    .ok_or(BtfError::Malformed("array size overflows"))
            }
            _ => Err(BtfError::Malformed("member type has no size")),
        }
    }

    fn get(&self, type_id: u32) -> Result<&Type, BtfError> {
        self.types
            .get(type_id as usize)
            .ok_or(BtfError::Malformed("type id out of range"))
    }

    fn name(&self, offset: u32) -> Option<&str> {
        let tail = self.strings.get(offset as usize..)?;
        let end = tail.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&tail[..end]).ok()
    }
}

fn read_type(reader: &mut Reader<'_>) -> Result<Type, BtfError> {
    let name_off = reader.u32()?;
    let info = reader.u32()?;
    let size_or_type = reader.u32()?;
    let vlen = (info & 0xffff) as usize;
    let kind = (info >> 24) & 0x1f;
    let kind_flag = info >> 31 == 1;
    let mut t = Type {
        name_off,
        kind,
        size_or_type,
        members: Vec::new(),
        array: None,
        params: if kind == KIND_FUNC_PROTO { vlen } else { 0 },
    };
    match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => reader.skip(4)?,
        KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
        | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => {}
        KIND_ARRAY => {
            let elem = reader.u32()?;
            let _index_type = reader.u32()?;
            let count = reader.u32()?;
            t.array = Some((elem, count));
        }
        KIND_STRUCT | KIND_UNION => {
            for _ in 0..vlen {
                let name_off = reader.u32()?;
                let type_id = reader.u32()?;
                let raw_offset = reader.u32()?;
                let (bit_offset, bitfield_size) = if kind_flag {
                    (raw_offset & 0x00ff_ffff, raw_offset >> 24)
                } else {
                    (raw_offset, 0)
                };
                t.members.push(Member {
                    name_off,
                    type_id,
                    bit_offset,
                    bitfield_size,
                });
            }
        }
        KIND_ENUM | KIND_FUNC_PROTO => reader.skip(8 * vlen)?,
        KIND_DATASEC | KIND_ENUM64 => reader.skip(12 * vlen)?,
        _ => return Err(BtfError::Malformed("unknown type kind")),
    }
    Ok(t)
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], BtfError> {
        let (head, tail) = self
            .bytes
            .split_first_chunk::<N>()
            .ok_or(BtfError::Malformed("truncated"))?;
        self.bytes = tail;
        Ok(*head)
    }

    fn skip(&mut self, len: usize) -> Result<(), BtfError> {
        self.bytes = self
            .bytes
            .get(len..)
            .ok_or(BtfError::Malformed("truncated"))?;
        Ok(())
    }

    fn u8(&mut self) -> Result<u8, BtfError> {
        Ok(self.take::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, BtfError> {
        Ok(u16::from_ne_bytes(self.take()?))
    }

    fn u32(&mut self) -> Result<u32, BtfError> {
        Ok(u32::from_ne_bytes(self.take()?))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds BTF blobs for tests: types are added in id order from 1.
    #[derive(Default)]
    pub(crate) struct BtfBuilder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl BtfBuilder {
        pub(crate) fn new() -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }

        fn string(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn header(&mut self, name: &str, kind: u32, vlen: u32, kind_flag: bool, size: u32) -> u32 {
            let name_off = self.string(name);
            let info = (kind << 24) | vlen | if kind_flag { 1 << 31 } else { 0 };
            for v in [name_off, info, size] {
                self.types.extend_from_slice(&v.to_ne_bytes());
            }
            let id = self.next_id;
            self.next_id += 1;
            id
        }

        pub(crate) fn int(&mut self, name: &str, size: u32) -> u32 {
            let id = self.header(name, KIND_INT, 0, false, size);
            self.types.extend_from_slice(&(size * 8).to_ne_bytes());
            id
        }

        pub(crate) fn typedef(&mut self, name: &str, target: u32) -> u32 {
            self.header(name, KIND_TYPEDEF, 0, false, target)
        }

        pub(crate) fn volatile(&mut self, target: u32) -> u32 {
            self.header("", KIND_VOLATILE, 0, false, target)
        }

        pub(crate) fn pointer(&mut self, target: u32) -> u32 {
            self.header("", KIND_PTR, 0, false, target)
        }

        pub(crate) fn array(&mut self, elem: u32, index: u32, count: u32) -> u32 {
            let id = self.header("", KIND_ARRAY, 0, false, 0);
            for v in [elem, index, count] {
                self.types.extend_from_slice(&v.to_ne_bytes());
            }
            id
        }

        /// `members`: (name, type id, bit offset, bitfield size).
        pub(crate) fn composite(
            &mut self,
            union: bool,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32, u32)],
        ) -> u32 {
            let kind_flag = members.iter().any(|m| m.3 != 0);
            let kind = if union { KIND_UNION } else { KIND_STRUCT };
            let id = self.header(name, kind, members.len() as u32, kind_flag, size);
            for &(member, type_id, bits, bitfield) in members {
                let name_off = self.string(member);
                let raw = if kind_flag {
                    (bitfield << 24) | bits
                } else {
                    bits
                };
                for v in [name_off, type_id, raw] {
                    self.types.extend_from_slice(&v.to_ne_bytes());
                }
            }
            id
        }

        /// A function taking `params` parameters of type `param`, returning `ret`.
        pub(crate) fn function(&mut self, name: &str, ret: u32, params: &[u32]) -> u32 {
            let prototype = self.header("", KIND_FUNC_PROTO, params.len() as u32, false, ret);
            for &param in params {
                let name_off = self.string("arg");
                for v in [name_off, param] {
                    self.types.extend_from_slice(&v.to_ne_bytes());
                }
            }
            self.header(name, KIND_FUNC, 0, false, prototype)
        }

        pub(crate) fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_ne_bytes());
            out.push(1);
            out.push(0);
            let type_len = self.types.len() as u32;
            for v in [
                HEADER_LEN as u32,
                0,
                type_len,
                type_len,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&v.to_ne_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    fn sample() -> Btf {
        let mut b = BtfBuilder::new();
        let u16_t = b.int("unsigned short", 2);
        let u32_t = b.int("unsigned int", 4);
        let be16 = b.typedef("__be16", u16_t);
        let pair = b.composite(false, "", 4, &[("lo", u16_t, 0, 0), ("hi", be16, 16, 0)]);
        let anon = b.composite(true, "", 4, &[("both", u32_t, 0, 0), ("", pair, 0, 0)]);
        let bytes = b.array(u32_t, u32_t, 4);
        let inner = b.composite(
            false,
            "inner",
            24,
            &[("", anon, 0, 0), ("addr", bytes, 64, 0)],
        );
        let ptr = b.pointer(inner);
        b.composite(
            false,
            "outer",
            48,
            &[
                ("flags", u32_t, 0, 3),
                ("in", inner, 64, 0),
                ("next", ptr, 256, 0),
            ],
        );
        Btf::parse(&b.build()).expect("sample BTF parses")
    }

    #[test]
    fn finds_members_through_anonymous_unions_and_nesting() {
        let btf = sample();
        assert_eq!(
            btf.member("outer", &["in", "hi"]).unwrap(),
            MemberLocation {
                offset: 10,
                size: 2
            }
        );
        assert_eq!(
            btf.member("outer", &["in", "addr"]).unwrap(),
            MemberLocation {
                offset: 16,
                size: 16
            }
        );
        assert_eq!(
            btf.member("outer", &["next"]).unwrap(),
            MemberLocation {
                offset: 32,
                size: 8
            }
        );
        assert_eq!(
            btf.member("inner", &["both"]).unwrap(),
            MemberLocation { offset: 0, size: 4 }
        );
    }

    #[test]
    fn counts_a_function_parameters() {
        let mut b = BtfBuilder::new();
        let int = b.int("int", 4);
        let ptr = b.pointer(int);
        // inet_csk_accept before 6.10 took (sk, flags, err, kern); after, (sk, arg).
        b.function("old_accept", ptr, &[ptr, int, ptr, int]);
        b.function("new_accept", ptr, &[ptr, ptr]);
        let btf = Btf::parse(&b.build()).unwrap();
        assert_eq!(btf.function_params("old_accept"), Some(4));
        assert_eq!(btf.function_params("new_accept"), Some(2));
        assert_eq!(btf.function_params("missing"), None);
    }

    #[test]
    fn refuses_bitfields_and_names_what_is_missing() {
        let btf = sample();
        assert!(matches!(
            btf.member("outer", &["flags"]),
            Err(BtfError::Bitfield { .. })
        ));
        match btf.member("outer", &["in", "nope"]) {
            Err(BtfError::NoSuchMember { member, .. }) => assert_eq!(member, "in.nope"),
            other => panic!("expected NoSuchMember, got {other:?}"),
        }
        assert!(matches!(
            btf.member("missing", &["x"]),
            Err(BtfError::NoSuchStruct(_))
        ));
        assert!(matches!(
            btf.member("outer", &["next", "first"]),
            Err(BtfError::NotComposite { .. })
        ));
    }

    #[test]
    fn rejects_truncated_and_foreign_blobs() {
        let blob = BtfBuilder::new().build();
        assert!(Btf::parse(&blob[..10]).is_err());
        let mut swapped = blob.clone();
        swapped.swap(0, 1);
        assert!(matches!(Btf::parse(&swapped), Err(BtfError::Malformed(_))));
        let mut b = BtfBuilder::new();
        b.int("int", 4);
        let blob = b.build();
        // Cut into the type section: the header's lengths no longer fit.
        assert!(Btf::parse(&blob[..blob.len() - 8]).is_err());
    }
}
