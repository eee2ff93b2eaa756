//! The upstream URL: scheme, host, port and the request target sent upstream.

use std::fmt;
use std::net::IpAddr;

/// The transport an upstream URL selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// A parsed `http://` or `https://` URL with everything needed to send a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamUrl {
    pub scheme: Scheme,
    /// Host name or IP address, without the brackets of an IPv6 literal.
    pub host: String,
    pub port: u16,
    /// Path and query as sent on the request line; never empty.
    pub target: String,
    /// The value of the `Host` header: the host, and the port when it is not the default.
    pub authority: String,
}

/// An invalid upstream URL, with the reason.
#[derive(Debug, PartialEq, Eq)]
pub struct UrlError(&'static str);

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for UrlError {}

impl UpstreamUrl {
    /// Parses an absolute `http` or `https` URL.
    ///
    /// User information is rejected because fanout never sends credentials,
    /// and a fragment is dropped because it is never sent to a server.
    pub fn parse(input: &str) -> Result<UpstreamUrl, UrlError> {
        let (scheme, rest) = split_scheme(input)?;
        let rest = rest.split('#').next().unwrap_or_default();
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(authority_end);

        if authority.contains('@') {
            return Err(UrlError("user information (user@host) is not supported"));
        }
        let (host, port) = split_host_port(authority, scheme)?;
        validate_host(host)?;
        let target = match target {
            "" => "/".to_string(),
            t if t.starts_with('?') => format!("/{t}"),
            t => t.to_string(),
        };
        if !target.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(UrlError(
                "the path and query may only contain visible ASCII characters; percent-encode the rest",
            ));
        }

        let default_port = port == default_port(scheme);
        let bracketed = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let authority = if default_port {
            bracketed
        } else {
            format!("{bracketed}:{port}")
        };
        Ok(UpstreamUrl {
            scheme,
            host: host.to_string(),
            port,
            target,
            authority,
        })
    }

    /// Returns the host as an IP address when it is an address literal, so no lookup is needed.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        write!(f, "{scheme}://{}{}", self.authority, self.target)
    }
}

fn split_scheme(input: &str) -> Result<(Scheme, &str), UrlError> {
    let Some((scheme, rest)) = input.split_once("://") else {
        return Err(UrlError(
            "expected an absolute URL starting with http:// or https://",
        ));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "http" => Ok((Scheme::Http, rest)),
        "https" => Ok((Scheme::Https, rest)),
        _ => Err(UrlError("unsupported scheme: expected http or https")),
    }
}

fn default_port(scheme: Scheme) -> u16 {
    match scheme {
        Scheme::Http => 80,
        Scheme::Https => 443,
    }
}

fn split_host_port(authority: &str, scheme: Scheme) -> Result<(&str, u16), UrlError> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(UrlError("unterminated IPv6 address: missing ']'"));
        };
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(UrlError("invalid IPv6 address between '[' and ']'"));
        }
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(UrlError("unexpected characters after the IPv6 address")),
            },
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err(UrlError(
                    "an IPv6 address must be written in brackets: [::1]",
                ));
            }
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };

    let port = match port {
        None | Some("") => default_port(scheme),
        Some(digits) if digits.bytes().all(|b| b.is_ascii_digit()) => match digits.parse() {
            Ok(0) | Err(_) => return Err(UrlError("invalid port: expected 1 to 65535")),
            Ok(port) => port,
        },
        Some(_) => return Err(UrlError("invalid port: expected 1 to 65535")),
    };
    Ok((host, port))
}

fn validate_host(host: &str) -> Result<(), UrlError> {
    if host.is_empty() {
        return Err(UrlError("missing host"));
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-._:".contains(&b);
    if !host.bytes().all(allowed) {
        return Err(UrlError(
            "invalid host: expected a DNS name or an IP address (letters, digits, '-', '.')",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_default_upstream() {
        let url = UpstreamUrl::parse("https://exponea-engineering-assignment.appspot.com/api/work")
            .unwrap();
        assert_eq!(url.scheme, Scheme::Https);
        assert_eq!(url.host, "exponea-engineering-assignment.appspot.com");
        assert_eq!(url.port, 443);
        assert_eq!(url.target, "/api/work");
        assert_eq!(url.authority, "exponea-engineering-assignment.appspot.com");
    }

    #[test]
    fn keeps_explicit_port_in_authority() {
        let url = UpstreamUrl::parse("http://127.0.0.1:8081/api/work?x=1#frag").unwrap();
        assert_eq!(url.port, 8081);
        assert_eq!(url.authority, "127.0.0.1:8081");
        assert_eq!(url.target, "/api/work?x=1");
        assert_eq!(url.to_string(), "http://127.0.0.1:8081/api/work?x=1");
    }

    #[test]
    fn parses_ipv6_literal() {
        let url = UpstreamUrl::parse("HTTP://[::1]:9000").unwrap();
        assert_eq!(url.host, "::1");
        assert_eq!(url.port, 9000);
        assert_eq!(url.target, "/");
        assert_eq!(url.authority, "[::1]:9000");
        assert!(url.ip().is_some());
    }

    #[test]
    fn rejects_malformed_urls() {
        let bad = [
            "example.com/api",
            "ftp://example.com/",
            "http://",
            "http:///path",
            "http://user:pw@example.com/",
            "http://example.com:0/",
            "http://example.com:65536/",
            "http://example.com:+80/",
            "http://exa mple.com/",
            "http://example.com/a b",
            "http://example.com/\r\nX: y",
            "http://[::1/",
            "http://[nope]:80/",
            "http://[::1]x/",
            "http://::1:80/",
        ];
        for input in bad {
            assert!(UpstreamUrl::parse(input).is_err(), "accepted {input:?}");
        }
    }
}
