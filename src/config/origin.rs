//! Where each setting came from, so that an error names what the user actually set: the
//! flag when it was on the command line, the environment variable otherwise.

use std::{collections::HashMap, fmt};

use clap::{ArgMatches, parser::ValueSource};

use super::Setting;

/// The flag and environment variable of every setting, and which of them was used.
#[derive(Debug, Clone, Default)]
pub struct Origins(HashMap<String, Origin>);

#[derive(Debug, Clone)]
struct Origin {
    flag: Option<String>,
    env: Option<String>,
    from_command_line: bool,
    /// Given at all: on the command line or in the environment.
    given: bool,
}

impl Origins {
    /// Reads the sources of the settings of `command` from the matches clap produced.
    pub fn from_matches(command: &clap::Command, matches: &ArgMatches) -> Self {
        let origins = command
            .get_arguments()
            .map(|arg| {
                let id = arg.get_id().as_str();
                let origin = Origin {
                    flag: arg.get_long().map(|long| format!("--{long}")),
                    env: arg.get_env().map(|env| env.to_string_lossy().into_owned()),
                    from_command_line: matches.try_contains_id(id).is_ok_and(|present| present)
                        && matches.value_source(id) == Some(ValueSource::CommandLine),
                    given: matches.try_contains_id(id).is_ok_and(|present| present)
                        && matches!(
                            matches.value_source(id),
                            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                        ),
                };
                (id.to_owned(), origin)
            })
            .collect();
        Self(origins)
    }

    /// How `setting` is called where the user set it: its flag if it was given on the
    /// command line, else its environment variable.
    pub fn name(&self, setting: Setting) -> String {
        let id = setting.id();
        match self.0.get(id) {
            Some(origin) if origin.from_command_line => origin.flag.clone(),
            Some(origin) => origin.env.clone().or_else(|| origin.flag.clone()),
            None => None,
        }
        .unwrap_or_else(|| id.to_owned())
    }

    /// Whether the user gave `setting` at all, rather than leaving its default.
    pub fn given(&self, setting: Setting) -> bool {
        self.0.get(setting.id()).is_some_and(|origin| origin.given)
    }
}

/// A setting that cannot be used, named as the user set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub setting: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(setting: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            setting: setting.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.setting, self.reason)
    }
}

impl std::error::Error for ConfigError {}
