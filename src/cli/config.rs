//! The optional TOML configuration file: its keys are the long flags of `serve` and `chat`
//! (`port = 8080`, `api_key = "…"`, `data_dir = "/srv/smolbot"`).
//!
//! Each value becomes the default of its flag before clap parses the command line, so the
//! precedence falls out of clap's own: a flag beats its environment variable, which beats the
//! file, which beats the built-in default. The file is found from `--config PATH`, else
//! `SMOLBOT_CONFIG`, else `$XDG_CONFIG_HOME/smolbot/config.toml` (or
//! `~/.config/smolbot/config.toml`) when that exists. A key no flag has is an error naming the
//! file and the key, so a typo never silently leaves a setting at its default.

use std::any::TypeId;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// The environment variable that names the file.
pub const CONFIG_ENV: &str = "SMOLBOT_CONFIG";

/// Subcommands whose flags the file sets.
const CONFIGURED: &[&str] = &["serve", "chat"];

/// Flags that are no setting: the file itself and clap's own.
const NOT_SETTINGS: &[&str] = &["config", "help", "version"];

/// Where the configuration comes from, if anywhere: the path, and whether it was asked for
/// (a missing file asked for is an error; a missing default file is no configuration).
pub fn locate(args: &[OsString]) -> Option<(PathBuf, bool)> {
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        let Some(text) = arg.to_str() else { continue };
        if text == "--" {
            break;
        }
        if text == "--config" {
            return iter.next().map(|path| (PathBuf::from(path), true));
        }
        if let Some(path) = text.strip_prefix("--config=") {
            return Some((PathBuf::from(path), true));
        }
    }
    if let Some(path) = std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty()) {
        return Some((PathBuf::from(path), true));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|home| PathBuf::from(home).join(".config"))
        })?;
    let path = base.join("smolbot").join("config.toml");
    path.is_file().then_some((path, false))
}

/// `command` with the settings of the configuration file (if any) as its flags' defaults.
pub fn apply(command: clap::Command, args: &[OsString]) -> anyhow::Result<clap::Command> {
    let Some((path, _)) = locate(args) else {
        return Ok(command);
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    let settings = parse(&command, &path, &text)?;
    Ok(with_defaults(command, &settings))
}

/// The file's settings as (flag id, value) pairs, checked against the flags of the
/// configured subcommands.
pub fn parse(
    command: &clap::Command,
    path: &Path,
    text: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("the config file {} is not valid TOML", path.display()))?;
    let known = known_keys(command);
    let mut settings = Vec::with_capacity(table.len());
    for (key, value) in table {
        let id = key.replace('-', "_");
        if !known.contains(&id) {
            bail!(
                "the config file {} has an unknown key `{key}`; the keys are: {}",
                path.display(),
                known.join(", ")
            );
        }
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => bail!(
                "the config file {} gives `{key}` a {}; it takes a string, number or boolean",
                path.display(),
                other.type_str()
            ),
        };
        check_value(command, path, &key, &id, &value)?;
        settings.push((id, value));
    }
    Ok(settings)
}

/// Every flag id of the configured subcommands, sorted.
fn known_keys(command: &clap::Command) -> Vec<String> {
    let mut keys: Vec<String> = CONFIGURED
        .iter()
        .filter_map(|name| command.find_subcommand(name))
        .flat_map(|sub| sub.get_arguments())
        .filter(|arg| arg.get_long().is_some())
        .map(|arg| arg.get_id().to_string())
        .filter(|id| !NOT_SETTINGS.contains(&id.as_str()))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Checks the value against the flag's type now, so a bad one is reported against the file
/// rather than as if it had been typed on the command line.
fn check_value(
    command: &clap::Command,
    path: &Path,
    key: &str,
    id: &str,
    value: &str,
) -> anyhow::Result<()> {
    let args = CONFIGURED
        .iter()
        .filter_map(|name| command.find_subcommand(name))
        .flat_map(|sub| sub.get_arguments())
        .filter(|arg| arg.get_id() == id);
    for arg in args {
        let kind = arg.get_value_parser().type_id();
        let expected = if kind == TypeId::of::<bool>() {
            (!matches!(value, "true" | "false")).then_some("true or false")
        } else if kind == TypeId::of::<u16>() {
            value
                .parse::<u16>()
                .is_err()
                .then_some("a whole number from 0 to 65535")
        } else if kind == TypeId::of::<usize>() {
            value
                .parse::<usize>()
                .is_err()
                .then_some("a whole number ≥ 0")
        } else if kind == TypeId::of::<f64>() {
            value.parse::<f64>().is_err().then_some("a number")
        } else {
            None
        };
        if let Some(expected) = expected {
            bail!(
                "the config file {} gives `{key}` the value {value:?}; it takes {expected}",
                path.display()
            );
        }
    }
    Ok(())
}

/// `command` with each setting as the default of the flag of that id, in every configured
/// subcommand that has it.
fn with_defaults(mut command: clap::Command, settings: &[(String, String)]) -> clap::Command {
    for name in CONFIGURED {
        let Some(sub) = command.find_subcommand(name) else {
            continue;
        };
        let present: Vec<(String, String)> = settings
            .iter()
            .filter(|(id, _)| sub.get_arguments().any(|arg| arg.get_id() == id.as_str()))
            .cloned()
            .collect();
        command = command.mut_subcommand(*name, |mut sub| {
            for (id, value) in present {
                // clap keeps defaults as `&'static str`; a few short strings live until exit.
                let value: &'static str = Box::leak(value.into_boxed_str());
                sub = sub.mut_arg(id, |arg| arg.default_value(value));
            }
            sub
        });
    }
    command
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::serve::ServeArgs;
    use crate::cli::Command;
    use clap::{CommandFactory, FromArgMatches};

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    /// The parsed command line with `toml` as the configuration file.
    fn parse_with(toml: &str, args: &[&str]) -> anyhow::Result<crate::cli::Cli> {
        let command = crate::cli::Cli::command();
        let settings = parse(&command, Path::new("test.toml"), toml)?;
        let matches = with_defaults(command, &settings).try_get_matches_from(os(args))?;
        Ok(crate::cli::Cli::from_arg_matches(&matches)?)
    }

    fn serve(toml: &str, args: &[&str]) -> ServeArgs {
        match parse_with(toml, args).expect("parses").command {
            Command::Serve(serve) => *serve,
            _ => panic!("not serve"),
        }
    }

    #[test]
    fn finds_the_flag_before_the_default_file() {
        let found = locate(&os(&["smolbot", "serve", "--config", "a.toml"]));
        assert_eq!(found, Some((PathBuf::from("a.toml"), true)));
        let found = locate(&os(&["smolbot", "--config=b.toml", "serve"]));
        assert_eq!(found, Some((PathBuf::from("b.toml"), true)));
    }

    #[test]
    fn file_values_become_defaults_and_flags_win() {
        let toml = "port = 8123\nhost = \"0.0.0.0\"\nstub = true\napi_key = \"k\"\n";
        let args = serve(toml, &["smolbot", "serve"]);
        assert_eq!(args.port, 8123);
        assert_eq!(args.host, "0.0.0.0");
        assert!(args.model.stub);
        assert_eq!(args.api_key.as_deref(), Some("k"));
        assert_eq!(
            serve(toml, &["smolbot", "serve", "--port", "9000"]).port,
            9000
        );
    }

    #[test]
    fn built_in_defaults_stay_without_the_key() {
        let args = serve("threads = 2\n", &["smolbot", "serve", "--stub"]);
        assert_eq!(args.port, 3000);
        assert_eq!(args.host, "127.0.0.1");
        assert_eq!(args.model.threads, Some(2));
    }

    #[test]
    fn the_shared_database_comes_from_the_file_too() {
        let toml = "database_url = \"postgres://smolbot@db/smolbot\"\nnode_id = \"web1\"\n";
        let args = serve(toml, &["smolbot", "serve", "--stub"]);
        assert_eq!(
            args.database_url.as_deref(),
            Some("postgres://smolbot@db/smolbot")
        );
        assert_eq!(args.node_id.as_deref(), Some("web1"));
        let args = serve("", &["smolbot", "serve", "--stub"]);
        assert_eq!((args.database_url, args.node_id), (None, None));
    }

    #[test]
    fn kebab_case_keys_work_too() {
        let args = serve(
            "queue-size = 3\nparallel = 2\nstub = true\n",
            &["smolbot", "serve"],
        );
        assert_eq!(args.queue_size, 3);
        assert_eq!(args.parallel, 2);
    }

    #[test]
    fn allowed_hosts_come_from_the_file_or_the_flag() {
        let names = |toml: &str, args: &[&str]| serve(toml, args).allowed_host_names();
        let toml = "allowed_hosts = \"chat.example, box.lan\"\n";
        assert_eq!(
            names(toml, &["smolbot", "serve"]),
            ["chat.example", "box.lan"]
        );
        let flag = ["smolbot", "serve", "--allowed-hosts", "a.example,b.example"];
        assert_eq!(names(toml, &flag), ["a.example", "b.example"]);
        assert!(names("", &["smolbot", "serve"]).is_empty());
    }

    #[test]
    fn chat_keys_are_known() {
        let command = crate::cli::Cli::command();
        let settings = parse(
            &command,
            Path::new("c.toml"),
            "no_think = true\nsystem = \"Be brief.\"\n",
        )
        .unwrap();
        assert_eq!(settings.len(), 2);
    }

    #[test]
    fn unknown_key_names_the_file_and_key() {
        let err = parse_with("prot = 8080\n", &["smolbot", "serve"])
            .err()
            .expect("an error")
            .to_string();
        assert!(err.contains("test.toml") && err.contains("`prot`"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        for toml in ["port = \"abc\"\n", "port = 99999\n", "stub = \"maybe\"\n"] {
            let err = parse_with(toml, &["smolbot", "serve"])
                .err()
                .expect("an error")
                .to_string();
            assert!(err.contains("test.toml"), "{toml}: {err}");
        }
        let err = parse_with("model = [1, 2]\n", &["smolbot", "serve"])
            .err()
            .expect("an error")
            .to_string();
        assert!(err.contains("`model`") && err.contains("array"), "{err}");
    }

    #[test]
    fn broken_toml_names_the_file() {
        let err = parse_with("port = \n", &["smolbot", "serve"])
            .err()
            .expect("an error")
            .to_string();
        assert!(err.contains("test.toml") && err.contains("TOML"), "{err}");
    }
}
