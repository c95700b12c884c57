//! Each emulator as a `[remotes.NAME]` block of laminar.toml: the refresh flow a user
//! would configure for the real service, with the URLs pointed at the emulator (as for
//! a proxy). The tests, the benchmarks and the demo write their configs from these.

use crate::drive::DriveHandle;
use crate::dropbox::DropboxEmulator;

impl DropboxEmulator {
    /// `[remotes.NAME]` for this emulator, type `dropbox`, with the app key, secret and
    /// refresh token it accepts.
    pub fn remote_toml(&self, name: &str) -> String {
        let e = self.endpoints();
        format!(
            "[remotes.{name}]\ntype = \"dropbox\"\nrefresh_token = {:?}\napp_key = {:?}\napp_secret = {:?}\n\
             api_url = {:?}\ncontent_url = {:?}\ntoken_url = {:?}\n",
            e.refresh_token, e.app_key, e.app_secret, e.api_url, e.content_url, e.token_url
        )
    }
}

impl DriveHandle {
    /// `[remotes.NAME]` for this emulator, type `drive`, with the OAuth client and
    /// refresh token it accepts.
    pub fn remote_toml(&self, name: &str) -> String {
        let e = self.endpoints();
        format!(
            "[remotes.{name}]\ntype = \"drive\"\nclient_id = {:?}\nclient_secret = {:?}\nrefresh_token = {:?}\n\
             api_url = {:?}\ntoken_url = {:?}\n",
            e.client_id, e.client_secret, e.refresh_token, e.api_url, e.token_url
        )
    }
}
