//! The command line: `serve` (the default), `healthcheck` and `verify`, each with only its
//! own settings, so that a client subcommand is not broken by a server's environment.

use std::ffi::OsString;

use clap::{
    CommandFactory, FromArgMatches, Parser, Subcommand,
    error::{ContextKind, ContextValue, ErrorKind},
};

use crate::{
    config::{Origins, Settings, redact_url},
    healthcheck::HealthcheckArgs,
    verify::VerifyArgs,
};

/// The visit counter of the Docker Swarm tutorial, on Redis or an embedded store.
///
/// Without a subcommand, `stackdemo [OPTIONS]` serves, as `stackdemo serve [OPTIONS]` does.
#[derive(Debug, Parser)]
#[command(name = "stackdemo", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve HTTP (the default when no subcommand is given).
    Serve(Box<Settings>),
    /// Exit 0 when the service on the listen address is healthy, 1 otherwise. Meant for
    /// container HEALTHCHECKs in images without curl.
    Healthcheck(HealthcheckArgs),
    /// Send visits to a deployment and check the counter's invariants.
    Verify(VerifyArgs),
}

impl Cli {
    /// Parses the command line of this process.
    pub fn from_env() -> Result<Self, clap::Error> {
        Self::parse_args(std::env::args_os())
    }

    /// Parses `args` (the program name first). Arguments that start with an option, or
    /// none at all, are the `serve` subcommand's.
    pub fn parse_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let mut command = Self::command();
        let named = args
            .get(1)
            .and_then(|first| first.to_str())
            .is_some_and(|first| {
                matches!(first, "help" | "-h" | "--help" | "-V" | "--version")
                    || command.find_subcommand(first).is_some()
            });
        if !named {
            args.insert(args.len().min(1), "serve".into());
        }
        if let Some(name) = not_utf8(&command, &args) {
            return Err(clap::Error::raw(
                ErrorKind::InvalidUtf8,
                format!("invalid {name}: not UTF-8 text\n"),
            ));
        }
        let matches = command
            .try_get_matches_from_mut(&args)
            .map_err(|error| name_what_was_set(error, &command, &args))?;
        let mut cli = Self::from_arg_matches(&matches)?;
        if let (Command::Serve(settings), Some(serve)) =
            (&mut cli.command, matches.subcommand_matches("serve"))
        {
            let definition = command
                .find_subcommand("serve")
                .expect("serve is a subcommand");
            settings.origins = Origins::from_matches(definition, serve);
        }
        Ok(cli)
    }
}

/// The setting, as the user gave it, whose value is not UTF-8 (clap refuses it without
/// saying which): an argument (named by its flag), or an environment variable of the
/// subcommand to run that no flag on the command line overrides.
fn not_utf8(command: &clap::Command, args: &[OsString]) -> Option<String> {
    let flag_of = |arg: &OsString| {
        let bytes = arg.as_encoded_bytes();
        let flag = bytes.split(|&b| b == b'=').next().unwrap_or(bytes);
        std::str::from_utf8(flag)
            .ok()
            .filter(|flag| flag.starts_with("--"))
            .map(str::to_owned)
    };
    let subcommand = args
        .get(1)
        .and_then(|name| command.find_subcommand(name.to_str()?));
    // A flag of the subcommand that takes a value.
    let takes_value = |flag: &str| {
        subcommand.is_some_and(|subcommand| {
            subcommand.get_arguments().any(|arg| {
                arg.get_long()
                    .is_some_and(|long| flag == format!("--{long}"))
                    && arg.get_action().takes_values()
            })
        })
    };
    for (i, arg) in args.iter().enumerate().skip(1) {
        if arg.to_str().is_some() {
            continue;
        }
        // `--flag=value`, or `--flag value`.
        let before = args
            .get(i - 1)
            .filter(|before| before.to_str().is_some_and(|b| !b.contains('=')))
            .and_then(flag_of)
            .filter(|flag| takes_value(flag));
        let named = flag_of(arg).or(before);
        return Some(named.unwrap_or_else(|| format!("argument {i}")));
    }
    let subcommand = subcommand?;
    subcommand.get_arguments().find_map(|arg| {
        let env = arg.get_env()?;
        let value = std::env::var_os(env)?;
        let overridden = arg.get_long().is_some_and(|long| {
            let flag = format!("--{long}");
            args.iter()
                .any(|given| flag_of(given).as_deref() == Some(flag.as_str()))
        });
        (value.to_str().is_none() && !overridden).then(|| env.to_string_lossy().into_owned())
    })
}

/// Rewrites clap's error for a bad value so that it names what the user set: the
/// environment variable when the value came from one (clap names the flag either way),
/// and never repeats the value of a setting whose value is hidden (a Redis URL may hold a
/// password).
fn name_what_was_set(
    error: clap::Error,
    command: &clap::Command,
    args: &[OsString],
) -> clap::Error {
    if !matches!(
        error.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return error;
    }
    let Some(ContextValue::String(shown)) = error.get(ContextKind::InvalidArg) else {
        return error;
    };
    let flag = shown.split(' ').next().unwrap_or(shown).to_owned();
    let Some(arg) = std::iter::once(command)
        .chain(command.get_subcommands())
        .flat_map(clap::Command::get_arguments)
        .find(|arg| {
            arg.get_long()
                .is_some_and(|long| flag == format!("--{long}"))
        })
    else {
        return error;
    };
    let on_command_line = args.iter().any(|given| {
        given
            .to_str()
            .is_some_and(|given| given == flag || given.starts_with(&format!("{flag}=")))
    });
    let name = match arg.get_env() {
        Some(env) if !on_command_line => env.to_string_lossy().into_owned(),
        _ => flag,
    };
    let given = match error.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(value)) => value.as_str(),
        _ => "",
    };
    if given.is_empty() {
        return clap::Error::raw(error.kind(), format!("invalid {name}: it needs a value\n"));
    }
    let reason = match (error.kind(), std::error::Error::source(&error)) {
        // A parser's reason may quote the value too.
        (ErrorKind::ValueValidation, Some(source)) => {
            source.to_string().replace(given, &shortened(given))
        }
        _ => match error.get(ContextKind::ValidValue) {
            Some(ContextValue::Strings(valid)) if !valid.is_empty() => {
                format!("expected one of {}", valid.join(", "))
            }
            _ => "not a valid value".to_owned(),
        },
    };
    let value = if arg.is_hide_env_values_set() {
        String::new()
    } else {
        format!(" '{}'", shortened(&redact_url(given)))
    };
    clap::Error::raw(error.kind(), format!("invalid {name}:{value} {reason}\n"))
}

/// The characters of a value shown in an error: enough to tell which it was.
const SHOWN_CHARS: usize = 64;

/// `value` as an error shows it: its beginning, when it is long.
fn shortened(value: &str) -> String {
    match value.char_indices().nth(SHOWN_CHARS) {
        Some((end, _)) => format!("{}…", &value[..end]),
        None => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> Settings {
        match Cli::parse_args(args).expect("valid arguments").command {
            Command::Serve(settings) => *settings,
            other => panic!("not serve: {other:?}"),
        }
    }

    #[test]
    fn options_without_a_subcommand_are_serves() {
        assert_eq!(serve(&["stackdemo"]).listen.port(), 8000);
        assert_eq!(
            serve(&["stackdemo", "--listen", "127.0.0.1:9"])
                .listen
                .port(),
            9
        );
        assert_eq!(
            serve(&["stackdemo", "serve", "--listen", "127.0.0.1:9"])
                .listen
                .port(),
            9
        );
    }

    #[test]
    fn errors_name_the_flag_that_was_given() {
        let settings = serve(&["stackdemo", "--store-timeout", "6s"]);
        let error = settings.check().unwrap_err();
        assert_eq!(error.setting, "--store-timeout");
        assert!(
            error
                .reason
                .contains("the request timeout (5s, its default)"),
            "{error}"
        );
    }

    /// Of two settings that do not fit together, the one the user set is named.
    #[test]
    fn a_setting_left_at_its_default_is_not_blamed() {
        let error = serve(&["stackdemo", "--request-timeout", "1ns"])
            .check()
            .unwrap_err();
        assert_eq!(error.setting, "--request-timeout");
        assert!(
            error
                .reason
                .contains("the store timeout (400ms, its default)"),
            "{error}"
        );
        let error = serve(&[
            "stackdemo",
            "--request-timeout",
            "1s",
            "--store-timeout",
            "600ms",
        ])
        .check()
        .unwrap_err();
        assert_eq!(error.setting, "--store-timeout");
        assert!(error.reason.contains("--request-timeout (1s)"), "{error}");
    }

    #[test]
    fn a_bad_flag_value_names_the_flag() {
        let error = Cli::parse_args(["stackdemo", "--listen", "nowhere"]).unwrap_err();
        assert!(
            error.to_string().contains("invalid --listen: 'nowhere'"),
            "{error}"
        );
    }

    #[test]
    fn a_value_that_is_not_utf8_is_named_by_its_flag() {
        use std::os::unix::ffi::OsStringExt;

        let junk = OsString::from_vec(vec![0xff, 0xfe]);
        let mut joined = b"--replica=".to_vec();
        joined.extend([0xff]);
        for args in [
            vec!["stackdemo".into(), "--replica".into(), junk.clone()],
            vec!["stackdemo".into(), OsString::from_vec(joined)],
        ] {
            let error = Cli::parse_args(args).unwrap_err().to_string();
            assert_eq!(error, "error: invalid --replica: not UTF-8 text\n");
        }
        // After a flag that takes no value, or one given its value: not that flag's.
        for before in ["--redis-wait-aof", "--replica=a"] {
            let args = vec!["stackdemo".into(), before.into(), junk.clone()];
            let error = Cli::parse_args(args).unwrap_err().to_string();
            assert!(!error.contains(before), "{error}");
            assert!(error.contains("not UTF-8 text"), "{error}");
        }
    }

    #[test]
    fn a_long_value_is_shown_by_its_beginning_once() {
        let value = "9".repeat(5000);
        for flag in ["--rate-limit", "--listen", "--workers"] {
            let error = Cli::parse_args(["stackdemo", flag, &value])
                .unwrap_err()
                .to_string();
            assert!(error.len() < 400, "{flag}: {error}");
            assert!(
                error.contains(&format!("'{}…'", &value[..64])),
                "{flag}: {error}"
            );
        }
    }

    #[test]
    fn a_flag_without_a_value_says_it_needs_one() {
        for args in [
            &["stackdemo", "--listen"][..],
            &["stackdemo", "--data-dir", ""],
            &["stackdemo", "serve", "--redis-url"],
        ] {
            let error = Cli::parse_args(args).unwrap_err().to_string();
            assert!(error.contains(": it needs a value"), "{args:?}: {error}");
            assert!(!error.contains("expected one of"), "{args:?}: {error}");
        }
    }

    #[test]
    fn verify_takes_only_its_own_settings() {
        let help = Cli::command()
            .find_subcommand_mut("verify")
            .unwrap()
            .render_help()
            .to_string();
        assert!(!help.contains("--listen"), "{help}");
        assert!(!help.contains("--redis-url"), "{help}");
    }
}
