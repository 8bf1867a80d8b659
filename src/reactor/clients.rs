//! The control socket: accepting operators' connections (limited per user,
//! root always admitted), reading one request each, writing the answer,
//! dropping the idle.

use super::*;

pub(super) struct Client {
    pub(super) stream: UnixStream,
    pub(super) input: Vec<u8>,
    pub(super) output: Vec<u8>,
    pub(super) written: usize,
    /// Close after the output is flushed.
    pub(super) done: bool,
    pub(super) uid: u32,
    /// Dropped if it makes no progress by then: the request must come
    /// soon after the connect, the answer must be read on.
    pub(super) deadline: Instant,
}

impl Daemon {
    pub(super) fn accept_clients(&mut self, now: Instant) {
        loop {
            match self.control.accept() {
                Ok((mut stream, _)) => {
                    let Some(uid) = self.client_uid(&stream) else {
                        self.stats.control_refused += 1;
                        continue;
                    };
                    let by_uid = self.client_uids.get(&uid).copied().unwrap_or(0);
                    if let Err(busy) = control::admit(uid, self.clients.len(), by_uid) {
                        // Said, not just closed: the CLI prints why. A
                        // client that does not read it loses nothing.
                        self.stats.control_busy += 1;
                        self.busy_unlogged += 1;
                        let _ = stream.write(&ControlReply::Failed(busy.to_string()).encode());
                        continue;
                    }
                    let token = Token(LINKS.0 + MAX_LINKS + self.next_client % (1 << 20));
                    self.next_client += 1;
                    if self.poll.registry().register(&mut stream, token, Interest::READABLE).is_ok()
                    {
                        *self.client_uids.entry(uid).or_default() += 1;
                        self.clients.insert(
                            token,
                            Client {
                                stream,
                                input: Vec::new(),
                                output: Vec::new(),
                                written: 0,
                                done: false,
                                uid,
                                deadline: now + REQUEST_TIMEOUT,
                            },
                        );
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("control socket accept failed: {e}");
                    break;
                }
            }
        }
    }

    /// The uid of a client that may use the control socket. The socket
    /// file is mode 0600 (0660 for the control group), but a file mode can
    /// be loosened by hand or by a package: the kernel's word on who
    /// connected decides.
    pub(super) fn client_uid(&self, stream: &UnixStream) -> Option<u32> {
        use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
        match getsockopt(stream, PeerCredentials) {
            Ok(c) => {
                let groups = match self.control_gid {
                    Some(g) if c.uid() != 0 && c.gid() != g => control::process_groups(c.pid()),
                    _ => Vec::new(),
                };
                control::client_allowed(c.uid(), c.gid(), &groups, self.control_gid)
                    .then_some(c.uid())
            }
            Err(e) => {
                log::warn!("control socket: cannot read the client's credentials: {e}");
                None
            }
        }
    }

    pub(super) fn close_client(&mut self, mut client: Client) {
        let _ = self.poll.registry().deregister(&mut client.stream);
        if let Some(n) = self.client_uids.get_mut(&client.uid) {
            *n -= 1;
            if *n == 0 {
                self.client_uids.remove(&client.uid);
            }
        }
    }

    /// Close the clients past their deadline, and say once how many were
    /// turned away as busy since the last time.
    pub(super) fn expire_clients(&mut self, now: Instant) {
        let late: Vec<Token> =
            self.clients.iter().filter(|(_, c)| c.deadline <= now).map(|(t, _)| *t).collect();
        for token in &late {
            if let Some(client) = self.clients.remove(token) {
                self.stats.control_timeouts += 1;
                self.close_client(client);
            }
        }
        if !late.is_empty() {
            log::warn!(
                "closed {} control connections that sent no request within {REQUEST_TIMEOUT:?} or left the answer unread for {ANSWER_TIMEOUT:?}",
                late.len()
            );
        }
        if self.busy_unlogged > 0 {
            log::warn!(
                "turned away {} control connections: {} open, at most {} per user and {} in all ({} kept for root)",
                self.busy_unlogged,
                self.clients.len(),
                control::MAX_CLIENTS_PER_UID,
                control::MAX_CLIENTS,
                control::ROOT_SLOTS
            );
            self.busy_unlogged = 0;
        }
    }

    pub(super) fn on_client(&mut self, now: Instant, token: Token, readable: bool) {
        let Some(mut client) = self.clients.remove(&token) else { return };
        let mut keep = true;
        if readable && !client.done {
            let mut buf = [0u8; 1024];
            loop {
                match client.stream.read(&mut buf) {
                    Ok(0) => {
                        keep = false;
                        break;
                    }
                    Ok(n) => client.input.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        keep = false;
                        break;
                    }
                }
            }
            let frame = control::request_frame_len(&client.input);
            if let Ok(None) = frame {
                if client.input.len() > MAX_REQUEST {
                    keep = false;
                }
            } else {
                let decoded = frame.and_then(|n| {
                    control::decode_request(&client.input[..n.unwrap_or(client.input.len())])
                });
                let reply = match decoded {
                    Ok((request, json)) => {
                        self.stats.control_requests += 1;
                        self.execute(request, json)
                    }
                    Err(e) => {
                        self.stats.control_errors += 1;
                        Err(RequestError::Malformed(e))
                    }
                };
                ControlReply::from(reply).encode_into(&mut client.output);
                client.done = true;
                client.deadline = now + ANSWER_TIMEOUT;
                keep = true;
            }
        }
        if keep && client.written < client.output.len() {
            loop {
                match client.stream.write(&client.output[client.written..]) {
                    Ok(n) => {
                        client.written += n;
                        client.deadline = now + ANSWER_TIMEOUT;
                        if client.written == client.output.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        keep = false;
                        break;
                    }
                }
            }
        }
        let flushed = client.done && client.written >= client.output.len();
        if !keep || flushed {
            self.close_client(client);
            return;
        }
        let interest = if client.written < client.output.len() {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let _ = self.poll.registry().reregister(&mut client.stream, token, interest);
        self.clients.insert(token, client);
    }
}

/// Bind the control socket with mode 0600, or group-owned by `group` with
/// mode 0660. A socket file left by a dead daemon is replaced; one that
/// answers belongs to a running daemon.
pub(super) fn bind_control(path: &Path, group: Option<u32>) -> Result<UnixListener, StartError> {
    let failed = |step| move |source| StartError::Control { step, path: path.to_owned(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|source| StartError::ControlDir { dir: dir.to_owned(), source })?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(StartError::ControlInUse(path.to_owned()));
        }
        let _ = std::fs::remove_file(path);
    }
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(failed(ControlStep::Bind))?;
    // Created 0600 by the umask, so the group gets in only once it owns it.
    let mode = match group {
        Some(gid) => {
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(failed(ControlStep::Group))?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(failed(ControlStep::Mode))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second daemon on the same control socket stops with the line that
    /// says which socket and how to stop the first; a socket path under a
    /// regular file names the directory that cannot be made.
    #[test]
    fn control_socket_start_errors() {
        let dir = std::env::temp_dir().join(format!("ctsync-start-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("ctl.sock");
        let first = bind_control(&path, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        let second = bind_control(&path, None).map(|_| ()).unwrap_err();
        let file = dir.join("file");
        std::fs::write(&file, "").unwrap();
        let under_file = bind_control(&file.join("ctl.sock"), None).map(|_| ()).unwrap_err();
        drop(first);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(mode, 0o600);
        assert!(matches!(second, StartError::ControlInUse(_)));
        assert_eq!(
            second.to_string(),
            format!(
                "control socket {} is in use: another ctsyncd runs with this config (stop it with ctsyncd -k)",
                path.display()
            )
        );
        assert!(
            under_file.to_string().starts_with(&format!("cannot create {}: ", file.display())),
            "{under_file}"
        );
    }
}
