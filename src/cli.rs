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
        (ErrorKind::ValueValidation, Some(source)) => source.to_string(),
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
        format!(" '{}'", redact_url(given))
    };
    clap::Error::raw(error.kind(), format!("invalid {name}:{value} {reason}\n"))
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
            error.reason.contains("STACKDEMO_REQUEST_TIMEOUT"),
            "{error}"
        );
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
