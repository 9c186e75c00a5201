//! Token pagination, once for every `Describe*` call.

use crate::{Action, Ec2Error, ErrorKind};

/// Fetches every page: `fetch(token)` returns one page's items and the next
/// token; an absent or empty token ends the listing. A server that hands
/// back the token it was just given would loop forever: that is an error.
#[cfg_attr(not(feature = "aws"), allow(dead_code))]
pub(crate) async fn paginate<T, F, Fut>(
    action: Action,
    region: &str,
    mut fetch: F,
) -> Result<Vec<T>, Ec2Error>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, Option<String>), Ec2Error>>,
{
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let (items, next) = fetch(token.clone()).await?;
        out.extend(items);
        match next.filter(|t| !t.is_empty()) {
            None => return Ok(out),
            Some(next) if Some(&next) == token.as_ref() => {
                return Err(Ec2Error::new(
                    action,
                    region,
                    ErrorKind::Other,
                    "the API returned the same page token twice",
                ));
            }
            Some(next) => token = Some(next),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[tokio::test]
    async fn follows_tokens_until_the_last_page() {
        let seen = RefCell::new(Vec::new());
        let pages = paginate(Action::DescribeSnapshots, "r", |token| {
            seen.borrow_mut().push(token.clone());
            async move {
                Ok(match token.as_deref() {
                    None => (vec![1, 2], Some("a".to_owned())),
                    Some("a") => (vec![3], Some("b".to_owned())),
                    Some("b") => (vec![4], Some(String::new())),
                    Some(other) => panic!("unexpected token {other}"),
                })
            }
        })
        .await
        .unwrap();
        assert_eq!(pages, [1, 2, 3, 4]);
        assert_eq!(
            *seen.borrow(),
            [None, Some("a".to_owned()), Some("b".to_owned())]
        );
    }

    #[tokio::test]
    async fn a_repeated_token_is_an_error_not_a_loop() {
        let err = paginate(Action::DescribeInstances, "r", |_| async {
            Ok((vec![1], Some("same".to_owned())))
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("same page token twice"), "{err}");
    }

    #[tokio::test]
    async fn an_error_on_a_later_page_fails_the_listing() {
        let err = paginate(Action::DescribeVolumes, "r", |token| async move {
            match token {
                None => Ok((vec![1], Some("t".to_owned()))),
                Some(_) => Err(Ec2Error::from_code(
                    Action::DescribeVolumes,
                    "r",
                    "RequestLimitExceeded",
                    None,
                )),
            }
        })
        .await
        .unwrap_err();
        assert!(err.is_retryable());
    }
}
