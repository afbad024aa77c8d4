//! The source line of an instruction, from a code object's line table, in
//! each format CPython 3.9–3.13 uses: `co_lnotab` (3.9), the PEP 626
//! `co_linetable` (3.10), and the location table (3.11+,
//! `Objects/locations.md`). The same walks as the interpreter's own
//! `PyCode_Addr2Line`.

/// The line of the instruction at `offset` bytes into the code object's
/// instructions, for Python 3.`minor`; `None` where the table gives none
/// (an instruction with no line) or ends before `offset`.
pub fn line_of(minor: u8, table: &[u8], first_line: u32, offset: u64) -> Option<u32> {
    let first = i64::from(first_line);
    let line = match minor {
        ..=9 => lnotab(table, first, offset),
        10 => pep626(table, first, offset),
        _ => locations(table, first, offset),
    }?;
    u32::try_from(line).ok().filter(|&line| line > 0)
}

/// (address delta, signed line delta) pairs; the line of the last pair
/// whose address is at or before `offset`.
fn lnotab(table: &[u8], first: i64, offset: u64) -> Option<i64> {
    let mut line = first;
    let mut address = 0u64;
    for pair in table.chunks_exact(2) {
        address += u64::from(pair[0]);
        if address > offset {
            break;
        }
        line += i64::from(pair[1] as i8);
    }
    Some(line)
}

/// (range length, signed line delta) pairs, a delta of -128 for a range
/// with no line.
fn pep626(table: &[u8], first: i64, offset: u64) -> Option<i64> {
    let mut line = first;
    let mut end = 0u64;
    for pair in table.chunks_exact(2) {
        let start = end;
        end += u64::from(pair[0]);
        let delta = pair[1] as i8;
        let this = if delta == -128 {
            None
        } else {
            line += i64::from(delta);
            Some(line)
        };
        if (start..end).contains(&offset) {
            return this;
        }
    }
    None
}

/// Entries of 1 to 8 code units (2 bytes each); each starts with a byte
/// whose high bit is set, carrying its kind and length.
fn locations(table: &[u8], first: i64, offset: u64) -> Option<i64> {
    let mut bytes = table.iter().copied().peekable();
    let mut line = first;
    let mut end = 0u64;
    while let Some(head) = bytes.next() {
        if head & 0x80 == 0 {
            return None;
        }
        let code = (head >> 3) & 15;
        let start = end;
        end += (u64::from(head & 7) + 1) * 2;
        let mut varint = || {
            let mut value = 0u64;
            let mut shift = 0;
            while let Some(&byte) = bytes.peek() {
                if byte & 0x80 != 0 || shift > 56 {
                    break;
                }
                bytes.next();
                value |= u64::from(byte & 63) << shift;
                shift += 6;
                if byte & 64 == 0 {
                    break;
                }
            }
            value
        };
        let this = match code {
            15 => None,
            14 => {
                let delta = signed(varint());
                // End line, column, end column.
                varint();
                varint();
                varint();
                line += delta;
                Some(line)
            }
            13 => {
                line += signed(varint());
                Some(line)
            }
            10..=12 => {
                line += i64::from(code - 10);
                bytes.next();
                bytes.next();
                Some(line)
            }
            _ => {
                bytes.next();
                Some(line)
            }
        };
        if (start..end).contains(&offset) {
            return this;
        }
    }
    None
}

fn signed(value: u64) -> i64 {
    if value & 1 != 0 {
        -((value >> 1) as i64)
    } else {
        (value >> 1) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lnotab_adds_each_pair_up_to_the_instruction() {
        // Line 10 at 0, 11 from byte 6, 13 from byte 10; -1 from byte 20.
        let table = [6, 1, 4, 2, 10, 0xff];
        assert_eq!(line_of(9, &table, 10, 0), Some(10));
        assert_eq!(line_of(9, &table, 10, 6), Some(11));
        assert_eq!(line_of(9, &table, 10, 12), Some(13));
        assert_eq!(line_of(9, &table, 10, 40), Some(12));
    }

    #[test]
    fn pep626_ranges_and_a_range_with_no_line() {
        // [0,4) line 5; [4,10) no line; [10,12) line 7.
        let table = [4, 0, 6, 0x80, 2, 2];
        assert_eq!(line_of(10, &table, 5, 2), Some(5));
        assert_eq!(line_of(10, &table, 5, 4), None);
        assert_eq!(line_of(10, &table, 5, 11), Some(7));
        assert_eq!(line_of(10, &table, 5, 12), None, "past the table");
    }

    #[test]
    fn location_table_forms() {
        let table = [
            // Code 13 (no column), 1 unit, line +1 (svarint 2).
            0x80 | (13 << 3),
            2,
            // Short form (code 0), 2 units, same line, one byte of column.
            0x80 | 1,
            5,
            // One-line form (code 12): line +2, 3 units, two column bytes.
            0x80 | (12 << 3) | 2,
            1,
            9,
            // Long form (code 14): line -1 (svarint 3), end line, columns.
            0x80 | (14 << 3),
            3,
            0,
            4,
            8,
            // No location (code 15), 1 unit.
            0x80 | (15 << 3),
        ];
        assert_eq!(line_of(11, &table, 20, 0), Some(21));
        assert_eq!(line_of(11, &table, 20, 4), Some(21));
        assert_eq!(line_of(12, &table, 20, 6), Some(23));
        assert_eq!(line_of(13, &table, 20, 12), Some(22));
        assert_eq!(line_of(13, &table, 20, 14), None);
        assert_eq!(line_of(13, &table, 20, 16), None, "past the table");
    }

    #[test]
    fn a_varint_longer_than_one_byte() {
        // Line +100: svarint 200 = 8 | (3 << 6), continuation bit 64.
        let table = [0x80 | (13 << 3), 64 | 8, 3];
        assert_eq!(line_of(12, &table, 1, 0), Some(101));
        // Garbage (no entry byte) is no line, not a panic.
        assert_eq!(line_of(12, &[1, 2, 3], 1, 0), None);
    }
}
