//! The layer order of this crate, checked: a module may use only modules of
//! its own layer or of the layers below it (see [`crate::LAYERS`]).

use std::{
    fs,
    path::{Path, PathBuf},
};

/// The layer of the top-level module `name` (a file or folder under src/),
/// by its index in [`crate::LAYERS`].
fn layer_of(name: &str) -> Option<usize> {
    crate::LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&name))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("reading src/") {
        let path = entry.expect("reading src/").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every top-level module a source file names through `crate::`, including
/// inside `use crate::{a, b::c}` groups.
fn uses(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let before_tests = text.split("#[cfg(test)]").next().unwrap_or(text);
    // Comments may name any layer.
    let code: String = before_tests
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Only the first segment of each item of the group counts; nested
            // groups belong to an item already counted.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.push(first_segment(&item));
                        item.clear();
                    }
                    _ if depth == 0 => item.push(c),
                    _ => {}
                }
            }
            found.push(first_segment(&item));
        } else {
            found.push(first_segment(rest));
        }
    }
    found.retain(|s| !s.is_empty());
    found
}

fn first_segment(s: &str) -> String {
    s.trim()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

#[test]
fn no_module_uses_a_layer_above_its_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src/");
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|s| s.trim_end_matches(".rs"))
            .unwrap_or_default();
        if top == "lib" || top == "bin" || top == "layers" {
            continue;
        }
        let Some(own) = layer_of(top) else {
            wrong.push(format!("{}: not in any layer of LAYERS", rel.display()));
            continue;
        };
        let text = fs::read_to_string(file).expect("reading a source file");
        for used in uses(&text) {
            match layer_of(&used) {
                Some(l) if l > own => wrong.push(format!(
                    "{} ({}) uses crate::{used} ({})",
                    rel.display(),
                    crate::LAYERS[own].0,
                    crate::LAYERS[l].0
                )),
                _ => {}
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that run up:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn uses_reads_groups_and_paths() {
    let text = "use crate::{sys::netlink::{A, B}, datapath};\nlet x = crate::control::f();";
    assert_eq!(uses(text), ["sys", "datapath", "control"]);
}
