"""Just enough of a BTF reader for the BPF host-routing programs, without libbpf or bpftool.

A kfunc call names its kernel function by the function's type id in the kernel's own BTF
(/sys/kernel/btf/vmlinux), and the conntrack check reads `nf_conn.status` at an offset that
depends on the kernel build; both are looked up here at load time, so the hand-assembled
programs are not tied to one kernel. Format: include/uapi/linux/btf.h (a header, a type
section of `struct btf_type` records each followed by kind-specific data, a string section).
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
BTF_MAGIC = 0xEB9F

# BTF kinds (BTF_KIND_*) used below, and how many bytes follow a type record of each kind.
KIND_STRUCT, KIND_FUNC = 4, 12
# fixed: INT, ARRAY, VAR, DECL_TAG; per vlen entry: STRUCT, UNION, ENUM, FUNC_PROTO, DATASEC, ENUM64
_FIXED_EXTRA = {1: 4, 3: 12, 14: 4, 17: 4}
_PER_VLEN_EXTRA = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}


class BTFError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class BTF:
    funcs: dict[str, int]  # function name -> type id (first one wins, as libbpf does for vmlinux)
    struct_members: dict[str, dict[str, int]]  # struct name -> member name -> bit offset

    @classmethod
    def parse(cls, data: bytes) -> BTF:
        if len(data) < 24:
            raise BTFError("BTF data too short")
        magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<HBBIIIII", data)
        if magic != BTF_MAGIC:
            raise BTFError(f"bad BTF magic {magic:#x}")
        types = data[hdr_len + type_off: hdr_len + type_off + type_len]
        strs = data[hdr_len + str_off: hdr_len + str_off + str_len]

        def name(off: int) -> str:
            return strs[off: strs.index(b"\0", off)].decode()

        funcs: dict[str, int] = {}
        members: dict[str, dict[str, int]] = {}
        pos, tid = 0, 1
        while pos < len(types):
            name_off, info, _size = struct.unpack_from("<III", types, pos)
            kind, vlen, kind_flag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
            extra = _FIXED_EXTRA.get(kind, 0) + _PER_VLEN_EXTRA.get(kind, 0) * vlen
            if kind == KIND_FUNC and name_off:
                funcs.setdefault(name(name_off), tid)
            elif kind == KIND_STRUCT and name_off and name(name_off) not in members:
                fields = {}
                for i in range(vlen):
                    m_name, _type, offset = struct.unpack_from("<III", types, pos + 12 + 12 * i)
                    # With kind_flag set, the top byte of `offset` is the bitfield size.
                    fields[name(m_name) if m_name else ""] = offset & 0xFFFFFF if kind_flag else offset
                members[name(name_off)] = fields
            pos += 12 + extra
            tid += 1
        return cls(funcs, members)

    def func_id(self, func: str) -> int:
        try:
            return self.funcs[func]
        except KeyError:
            raise BTFError(f"the kernel's BTF has no function {func!r} (only vmlinux BTF is read: with "
                           f"nf_conntrack built as a module, its kfuncs live in the module's BTF)") from None

    def member_offset(self, struct_name: str, member: str) -> int:
        """Byte offset of a (non-bitfield) struct member."""
        try:
            return self.struct_members[struct_name][member] // 8
        except KeyError:
            raise BTFError(f"the kernel's BTF has no member {struct_name}.{member}") from None


@functools.cache
def vmlinux() -> BTF:
    """The running kernel's BTF (parsed once per process, ~0.2 s)."""
    try:
        with open(VMLINUX_BTF, "rb") as f:
            return BTF.parse(f.read())
    except OSError as e:
        raise BTFError(f"cannot read {VMLINUX_BTF} (kernel built without CONFIG_DEBUG_INFO_BTF?): {e}") from e
