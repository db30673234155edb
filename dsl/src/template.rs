//! Template text conventions shared by the daemon and the language server (pure functions, so
//! both read a template's front matter the same way).

/// A front-matter value as YAML reads a scalar: `"..."` with `\"` and `\\` escapes,
/// `'...'` with `''` for a quote, or the bare text.
fn unquote(v: &str) -> String {
    if let Some(inner) = v.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some('n') => out.push('\n'),
                    Some(o) => out.push(o),
                    None => out.push('\\'),
                }
            } else {
                out.push(c);
            }
        }
        out
    } else if let Some(inner) = v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')) {
        inner.replace("''", "'")
    } else {
        v.to_string()
    }
}

/// Front-matter fields in file order: (key, value).
pub type FrontMatter = Vec<(String, String)>;

/// Split `---` front matter from a template's body. Front matter is `key: value` lines;
/// values are unquoted as YAML scalars.
pub fn split_front_matter(text: &str) -> Result<(FrontMatter, &str), String> {
    let Some(rest) = text
        .strip_prefix("---\n")
        .or_else(|| text.strip_prefix("---\r\n"))
    else {
        return Ok((Vec::new(), text));
    };
    let end = rest
        .find("\n---")
        .ok_or("front matter opened with --- is never closed")?;
    let (head, tail) = rest.split_at(end);
    let body = tail[4..]
        .trim_start_matches(['\r'])
        .strip_prefix('\n')
        .unwrap_or(&tail[4..]);
    let mut fields = Vec::new();
    for (i, line) in head.lines().enumerate() {
        let line = line.trim_end();
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| format!("front matter line {} is not `key: value`", i + 2))?;
        fields.push((k.trim().to_string(), unquote(v.trim())));
    }
    Ok((fields, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_matter_values_are_unquoted_like_yaml_scalars() {
        let (f, body) = split_front_matter(
            "---\nsubject: \"Hi \\\"you\\\"\"\nfrom: 'it''s'\nplain: a: b\n---\nBody",
        )
        .unwrap();
        assert_eq!(
            f,
            vec![
                ("subject".into(), "Hi \"you\"".into()),
                ("from".into(), "it's".into()),
                ("plain".into(), "a: b".into())
            ]
        );
        assert_eq!(body, "Body");
        assert!(split_front_matter("---\nsubject: x\n").is_err());
        assert_eq!(
            split_front_matter("no front matter").unwrap().1,
            "no front matter"
        );
    }
}
