"""Workload: a guest that imports json and decimal (fresh in every sandbox) and uses both."""
import decimal
import json


def parse_total(doc):
    return str(sum(decimal.Decimal(price) for price in json.loads(doc)))
