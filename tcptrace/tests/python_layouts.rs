//! The layouts of CPython 3.9–3.13 that tcptrace knows
//! (model/python_layout.rs) are those of each version's own headers: a C
//! program compiled against every pyenv version on the image prints the
//! offsets, and each must match. Needs no root.

mod common;

use std::{collections::HashMap, process::Command};

use common::programs::{Scratch, programs_dir, pyenv_python, run, tool};
use tcptrace::model::python_layout::{
    BYTES_DATA, BYTES_SIZE, NEWEST_MINOR, OB_TYPE, OLDEST_MINOR, PyLayout, STR_LENGTH,
};

/// `name=offset` lines of the layout program built for Python 3.`minor`.
fn header_offsets(scratch: &Scratch, minor: u8) -> HashMap<String, u64> {
    let python = pyenv_python(minor);
    let prefix = python.parent().and_then(|bin| bin.parent()).unwrap();
    let include = prefix.join(format!("include/python3.{minor}"));
    let binary = scratch.path(&format!("layout3{minor}"));
    run(Command::new(tool("cc"))
        .arg("-I")
        .arg(&include)
        .arg("-I")
        .arg(include.join("internal"))
        .arg("-o")
        .arg(&binary)
        .arg(programs_dir().join("python_layout.c")));
    let out = Command::new(&binary)
        .output()
        .expect("run the layout program");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let (name, offset) = line.split_once('=')?;
            Some((name.to_owned(), offset.parse().ok()?))
        })
        .collect()
}

#[test]
fn every_known_layout_is_its_versions_headers() {
    let scratch = Scratch::new("python-layouts");
    for minor in OLDEST_MINOR..=NEWEST_MINOR {
        let headers = header_offsets(&scratch, minor);
        let layout = PyLayout::known(minor).unwrap();
        let ours: Vec<(&str, Option<u32>)> = vec![
            (
                "runtime_interpreters_head",
                Some(layout.runtime_interpreters_head),
            ),
            ("interp_threads_head", Some(layout.interp_threads_head)),
            ("thread_next", Some(layout.thread_next)),
            ("thread_interp", Some(layout.thread_interp)),
            ("thread_id", Some(layout.thread_id)),
            ("thread_frame", Some(layout.thread_frame)),
            ("cframe_frame", layout.cframe_frame),
            ("frame_previous", Some(layout.frame_previous)),
            ("frame_code", Some(layout.frame_code)),
            ("frame_instr", Some(layout.frame_instr)),
            ("frame_owner", layout.frame_owner),
            ("frame_entry", layout.frame_entry),
            ("code_name", Some(layout.code_name)),
            ("code_qualname", layout.code_qualname),
            ("code_filename", Some(layout.code_filename)),
            ("code_firstlineno", Some(layout.code_firstlineno)),
            ("code_linetable", Some(layout.code_linetable)),
            ("code_adaptive", layout.code_adaptive),
            ("ascii_size", Some(layout.ascii_size)),
            ("compact_size", Some(layout.compact_size)),
        ];
        assert!(
            headers.len() >= 19,
            "3.{minor}: the program printed {headers:?}"
        );
        for (name, ours) in ours {
            assert_eq!(
                headers.get(name).copied(),
                ours.map(u64::from),
                "3.{minor}: {name}"
            );
        }
        for (name, ours) in [
            ("ob_type", OB_TYPE),
            ("str_length", STR_LENGTH),
            ("bytes_size", BYTES_SIZE),
            ("bytes_data", BYTES_DATA),
        ] {
            assert_eq!(headers.get(name).copied(), Some(ours), "3.{minor}: {name}");
        }
    }
}
