//! What an S3 remote holds above its buckets: `laminar ls REMOTE:` lists the
//! buckets (ListBuckets), `laminar mkdir REMOTE:bucket` makes one (CreateBucket).

use std::sync::Arc;

use serde::Deserialize;

use super::{Call, S3Config, S3Store};
use crate::error::{Error, ErrorClass, Result};
use crate::http::HttpClient;
use crate::runtime::DriverChoice;

/// One bucket of an account.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Bucket {
    /// Its name.
    pub name: String,
    /// When it was made, as the store wrote it (RFC 3339), if it said.
    pub created: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListAllMyBucketsXml {
    #[serde(default)]
    buckets: BucketsXml,
}

#[derive(Deserialize, Default)]
struct BucketsXml {
    #[serde(rename = "Bucket", default)]
    bucket: Vec<BucketXml>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct BucketXml {
    name: String,
    creation_date: Option<String>,
}

/// The buckets the credentials of `cfg` own (its `bucket` is ignored), by name.
pub fn buckets(mut cfg: S3Config, driver: DriverChoice) -> Result<Vec<Bucket>> {
    cfg.bucket.clear();
    let (driver, _) = crate::runtime::select(driver).map_err(Error::Usage)?;
    crate::runtime::block_on(driver, async {
        let store = S3Store::new(Arc::new(cfg), HttpClient::default());
        let target = store.cfg.endpoint.url();
        let call =
            Call { method: "GET", key: None, query: Vec::new(), headers: Vec::new(), op: "list", target: &target };
        let (_, body) = store.call_small(call, Vec::new()).await?;
        let parsed: ListAllMyBucketsXml = quick_xml::de::from_reader(&body[..])
            .map_err(|e| Error::protocol("list", &target, format!("unreadable ListBuckets answer: {e}")))?;
        let mut out: Vec<Bucket> =
            parsed.buckets.bucket.into_iter().map(|b| Bucket { name: b.name, created: b.creation_date }).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    })
    .map_err(|e| Error::io("start", "runtime", e))?
}

impl S3Store {
    /// Makes the bucket (CreateBucket); `false` when it was there already, owned by
    /// these credentials.
    pub(super) async fn create_bucket(&self) -> Result<bool> {
        let bucket = self.cfg.bucket.clone();
        // Outside us-east-1 the region is named in the body, as S3 requires.
        let body = match self.cfg.region.as_str() {
            "us-east-1" => Vec::new(),
            region => format!(
                "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                 <LocationConstraint>{region}</LocationConstraint></CreateBucketConfiguration>"
            )
            .into_bytes(),
        };
        let call =
            Call { method: "PUT", key: None, query: Vec::new(), headers: Vec::new(), op: "mkdir", target: &bucket };
        match self.call_small(call, body).await {
            Ok(_) => Ok(true),
            Err(Error::Http { status: 409, code, .. }) if code == "BucketAlreadyOwnedByYou" => Ok(false),
            Err(Error::Http { status: 409, code, op, target, message, retry_after, .. })
                if code == "BucketAlreadyExists" =>
            {
                Err(Error::Http {
                    op,
                    target,
                    status: 409,
                    code,
                    message,
                    hint: "; bucket names are shared by every account of the store: choose another name".into(),
                    retry_after,
                    class: ErrorClass::FatalRelay,
                })
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_list_reads_with_and_without_buckets() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListAllMyBucketsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Owner><ID>x</ID></Owner>
<Buckets><Bucket><Name>b-two</Name><CreationDate>2026-01-02T03:04:05.000Z</CreationDate></Bucket>
<Bucket><Name>a-one</Name></Bucket></Buckets></ListAllMyBucketsResult>"#;
        let parsed: ListAllMyBucketsXml = quick_xml::de::from_reader(&xml[..]).unwrap();
        let names: Vec<&str> = parsed.buckets.bucket.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["b-two", "a-one"]);
        assert_eq!(parsed.buckets.bucket[0].creation_date.as_deref(), Some("2026-01-02T03:04:05.000Z"));
        let empty = br#"<ListAllMyBucketsResult><Owner><ID>x</ID></Owner><Buckets></Buckets></ListAllMyBucketsResult>"#;
        let parsed: ListAllMyBucketsXml = quick_xml::de::from_reader(&empty[..]).unwrap();
        assert!(parsed.buckets.bucket.is_empty());
    }
}
