#!/bin/sh
set -eu
cat > /etc/rabbitmq/conf.d/10-defaults.conf <<CONF
default_user = ${RABBITMQ_DEFAULT_USER:-guest}
default_pass = ${RABBITMQ_DEFAULT_PASS:-guest}
loopback_users = none
CONF
if [ -n "${RABBITMQ_ERLANG_COOKIE:-}" ]; then
  umask 077
  printf '%s' "$RABBITMQ_ERLANG_COOKIE" > "$HOME/.erlang.cookie"
fi
exec /usr/lib/rabbitmq/bin/rabbitmq-server
