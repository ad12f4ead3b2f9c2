#!/bin/sh
# The postgres image runs this once, on an empty data directory.
set -eu
psql -v ON_ERROR_STOP=1 -U postgres \
  -v owner_password="'campus-owner-password'" -v app_password="'campus-app-password'" \
  -v database=campus -f /campus/init.sql
