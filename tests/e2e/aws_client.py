"""aws_client.py — boto3 against ebd's AWS endpoint, for tests/e2e/aws.sh.

    aws_client.py ENDPOINT KEY SECRET REGION ACTION [ARGS...]

Actions (each prints one JSON line: the answer, or {"error": CODE, "message": ...}):
  put BUS N [DETAIL]     put_events with N entries (detail {"n": i} unless DETAIL is given)
  put_json FILE          put_events with the entries in FILE (a JSON array)
  test PATTERN EVENT     test_event_pattern
  put_skewed BUS SECONDS put_events signed as if the clock were SECONDS ahead (negative: behind)
  put_scoped BUS SERVICE put_events signed by hand for another service's credential scope
Runs with Debian's python3-boto3 (/usr/bin/python3); never leaves 127.0.0.1.
"""
import datetime
import json
import sys
from unittest import mock

import urllib.error
import urllib.request

import boto3
import botocore.auth
import botocore.awsrequest
import botocore.credentials
import botocore.config
import botocore.exceptions


def client(endpoint, key, secret, region):
    cfg = botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=10, read_timeout=30)
    return boto3.client("events", endpoint_url=endpoint, aws_access_key_id=key,
                        aws_secret_access_key=secret, region_name=region, config=cfg)


def entries(bus, n, detail=None):
    return [{"Source": "com.mycompany.myapp", "DetailType": "myDetailType",
             "Detail": detail or json.dumps({"n": i}), "EventBusName": bus} for i in range(n)]


def run(c, action, args):
    if action == "put":
        detail = args[2] if len(args) > 2 else None
        return c.put_events(Entries=entries(args[0], int(args[1]), detail))
    if action == "put_json":
        with open(args[0]) as f:
            return c.put_events(Entries=json.load(f))
    if action == "test":
        return c.test_event_pattern(EventPattern=args[0], Event=args[1])
    if action == "put_skewed":
        when = datetime.datetime.utcnow() + datetime.timedelta(seconds=int(args[1]))

        class Clock(datetime.datetime):
            @classmethod
            def utcnow(cls):
                return when

        with mock.patch.object(botocore.auth.datetime, "datetime", Clock):
            return c.put_events(Entries=entries(args[0], 1))
    if action == "put_scoped":
        return scoped(c, args[0], args[1])
    raise SystemExit("unknown action " + action)


def scoped(c, bus, service):
    """A PutEvents request signed with the client's key for `service` instead of events."""
    body = json.dumps({"Entries": entries(bus, 1)})
    url = c.meta.endpoint_url + "/"
    req = botocore.awsrequest.AWSRequest(method="POST", url=url, data=body, headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "AWSEvents.PutEvents"})
    creds = c._request_signer._credentials
    botocore.auth.SigV4Auth(creds, service, c.meta.region_name).add_auth(req)
    prepared = req.prepare()
    try:
        with urllib.request.urlopen(urllib.request.Request(
                url, data=body.encode(), headers=dict(prepared.headers), method="POST")) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        answer = json.loads(e.read())
        return {"error": answer.get("__type"), "message": answer.get("message"), "status": e.code}


def main():
    endpoint, key, secret, region, action = sys.argv[1:6]
    c = client(endpoint, key, secret, region)
    try:
        out = run(c, action, sys.argv[6:])
        out.pop("ResponseMetadata", None)
    except botocore.exceptions.ClientError as e:
        out = {"error": e.response["Error"]["Code"], "message": e.response["Error"]["Message"],
               "status": e.response["ResponseMetadata"]["HTTPStatusCode"]}
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
