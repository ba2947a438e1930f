//! The settings file (`earshot serve --config FILE`) and `--print-config`.
//!
//! Precedence is flags > `EARSHOT_*` environment > file > defaults. Clap already resolves flags
//! over environment over defaults; the file layer slots in underneath by turning each file
//! setting whose value still comes from a default into a command-line argument and parsing
//! again ([`file_args`]). So every setting is parsed and validated by the same clap code
//! whatever its source, and the file's keys are exactly the long flag names (`max-file-bytes`,
//! or `max_file_bytes`).
//!
//! This module must not open sockets or act on the settings; it only reads and prints them.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};

/// Arguments that are not settings and never come from (or go to) a file.
const NOT_SETTINGS: &[&str] = &["help", "version", "config_file", "print_config"];
/// Settings printed only as a count, never their values.
const SECRET: &[&str] = &["api_keys"];

/// Why the settings file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file could not be read.
    #[error("cannot read the config file {path}: {source}")]
    Read {
        /// Which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("the config file {path} is not valid TOML: {message}")]
    Syntax {
        /// Which file.
        path: PathBuf,
        /// The parser's explanation, with line and column.
        message: String,
    },
    /// A key that is not a setting.
    #[error("unknown setting {0:?} in the config file (keys are the long flag names of `earshot serve --help`)")]
    UnknownKey(String),
    /// A value of a type no setting takes (tables, dates).
    #[error(
        "setting {0:?} in the config file must be a string, number, boolean or a list of them"
    )]
    BadValue(String),
}

/// Reads a TOML settings file.
pub fn read_file(path: &Path) -> Result<toml::Table, SettingsError> {
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    text.parse::<toml::Table>()
        .map_err(|e| SettingsError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// Command-line arguments for the file settings that neither the command line nor the
/// environment gave. Appending them to the arguments and parsing again applies the file.
/// `cmd` must be built (`Command::build`) so global arguments are visible.
pub fn file_args(
    cmd: &Command,
    matches: &ArgMatches,
    table: &toml::Table,
) -> Result<Vec<OsString>, SettingsError> {
    let mut args = Vec::new();
    for (key, value) in table {
        let arg = find_arg(cmd, key).ok_or_else(|| SettingsError::UnknownKey(key.clone()))?;
        let id = arg.get_id().as_str();
        let given = matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if given {
            continue;
        }
        let long = arg.get_long().expect("settings have long names");
        let flag = matches!(arg.get_action(), ArgAction::SetTrue);
        for v in scalars(key, value)? {
            match (flag, v.as_str()) {
                (true, "true") => args.push(format!("--{long}").into()),
                (true, _) => {}
                (false, _) => args.push(format!("--{long}={v}").into()),
            }
        }
    }
    Ok(args)
}

fn find_arg<'a>(cmd: &'a Command, key: &str) -> Option<&'a clap::Arg> {
    let dashed = key.replace('_', "-");
    cmd.get_arguments().find(|a| {
        !NOT_SETTINGS.contains(&a.get_id().as_str())
            && (a.get_long() == Some(dashed.as_str()) || a.get_id().as_str() == key)
    })
}

/// A TOML value as the strings a flag takes (lists: one per element).
fn scalars(key: &str, value: &toml::Value) -> Result<Vec<String>, SettingsError> {
    match value {
        toml::Value::String(s) => Ok(vec![s.clone()]),
        toml::Value::Integer(i) => Ok(vec![i.to_string()]),
        toml::Value::Float(f) => Ok(vec![f.to_string()]),
        toml::Value::Boolean(b) => Ok(vec![b.to_string()]),
        toml::Value::Array(items) => items
            .iter()
            .map(|item| match item {
                toml::Value::Array(_) | toml::Value::Table(_) => {
                    Err(SettingsError::BadValue(key.to_string()))
                }
                other => scalars(key, other).map(|mut v| v.remove(0)),
            })
            .collect(),
        toml::Value::Table(_) | toml::Value::Datetime(_) => {
            Err(SettingsError::BadValue(key.to_string()))
        }
    }
}

/// The effective settings as a TOML file that `--config` reads back (secrets excepted).
pub fn to_toml(cmd: &Command, matches: &ArgMatches) -> String {
    let mut out = String::from(
        "# earshot serve: effective settings (flags > EARSHOT_* environment > config file > defaults)\n",
    );
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        let Some(long) = arg.get_long() else { continue };
        if NOT_SETTINGS.contains(&id) {
            continue;
        }
        let values: Vec<String> = matches
            .get_raw(id)
            .map(|raw| raw.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        if SECRET.contains(&id) {
            out.push_str(&format!("# {long}: {} set (not printed)\n", values.len()));
            continue;
        }
        let many =
            matches!(arg.get_action(), ArgAction::Append) || arg.get_value_delimiter().is_some();
        let line = if many {
            let items: Vec<toml::Value> = values.iter().map(|v| typed(v)).collect();
            toml::Value::Array(items).to_string()
        } else if let Some(v) = values.last() {
            typed(v).to_string()
        } else {
            out.push_str(&format!("# {long} = (not set)\n"));
            continue;
        };
        out.push_str(&format!("{long} = {line}\n"));
    }
    out
}

/// A raw flag value as the TOML type it looks like.
fn typed(raw: &str) -> toml::Value {
    if let Ok(i) = raw.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    match raw {
        "true" => toml::Value::Boolean(true),
        "false" => toml::Value::Boolean(false),
        _ => toml::Value::String(raw.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, Command};

    fn cmd() -> Command {
        let mut cmd = Command::new("t")
            .arg(
                Arg::new("workers")
                    .long("workers")
                    .env("T_WORKERS_TEST")
                    .default_value("1"),
            )
            .arg(Arg::new("queue").long("queue").default_value("16"))
            .arg(
                Arg::new("max_file_bytes")
                    .long("max-file-bytes")
                    .default_value("4GiB"),
            )
            .arg(
                Arg::new("api_keys")
                    .long("api-key")
                    .action(ArgAction::Append)
                    .value_delimiter(','),
            )
            .arg(Arg::new("fast").long("fast").action(ArgAction::SetTrue))
            .arg(Arg::new("config_file").long("config"));
        cmd.build();
        cmd
    }

    fn apply(argv: &[&str], file: &str) -> ArgMatches {
        let table: toml::Table = file.parse().unwrap();
        let first = cmd().get_matches_from(argv);
        let extra = file_args(&cmd(), &first, &table).unwrap();
        let all: Vec<OsString> = argv.iter().map(OsString::from).chain(extra).collect();
        cmd().get_matches_from(all)
    }

    #[test]
    fn the_file_fills_in_only_what_flags_left_at_defaults() {
        let m = apply(
            &["t", "--queue", "3"],
            "queue = 9\nmax_file_bytes = \"1GiB\"\napi-key = [\"a\", \"b\"]\nfast = true\n",
        );
        assert_eq!(m.get_one::<String>("queue").unwrap(), "3");
        assert_eq!(m.get_one::<String>("max_file_bytes").unwrap(), "1GiB");
        let keys: Vec<&String> = m.get_many("api_keys").unwrap().collect();
        assert_eq!(keys, ["a", "b"]);
        assert!(m.get_flag("fast"));
        assert_eq!(m.get_one::<String>("workers").unwrap(), "1");
    }

    #[test]
    fn unknown_keys_and_nested_tables_are_errors() {
        let m = cmd().get_matches_from(["t"]);
        let bad: toml::Table = "wokers = 2".parse().unwrap();
        assert!(matches!(
            file_args(&cmd(), &m, &bad),
            Err(SettingsError::UnknownKey(k)) if k == "wokers"
        ));
        let nested: toml::Table = "[queue]\nx = 1".parse().unwrap();
        assert!(matches!(
            file_args(&cmd(), &m, &nested),
            Err(SettingsError::BadValue(_))
        ));
        let not_a_setting: toml::Table = "config = \"x\"".parse().unwrap();
        assert!(file_args(&cmd(), &m, &not_a_setting).is_err());
    }

    #[test]
    fn printed_settings_read_back_the_same() {
        let m = apply(&["t", "--queue", "3", "--api-key", "secret"], "");
        let printed = to_toml(&cmd(), &m);
        assert!(printed.contains("queue = 3\n"), "{printed}");
        assert!(printed.contains("max-file-bytes = \"4GiB\"\n"), "{printed}");
        assert!(!printed.contains("secret"), "{printed}");
        assert!(printed.contains("# api-key: 1 set"), "{printed}");
        let again = apply(&["t"], &printed);
        assert_eq!(again.get_one::<String>("queue").unwrap(), "3");
    }
}
