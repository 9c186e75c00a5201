# The application's directory and its environment file. The secrets come
# from the `secrets` pillar (the 0600 file ektool uploads); the rendered
# file is 0600 too and its diff is never shown.
app-dir:
  file.directory:
    - name: /srv/app
    - mode: '0755'

app-env:
  file.managed:
    - name: /srv/app/.env
    - mode: '0600'
    - show_changes: False
    - contents: |
        DOMAIN={{ pillar['domain'] }}
        {%- for key, value in pillar.get('secrets', {}).items() %}
        {{ key }}={{ value | yaml_dquote }}
        {%- endfor %}
    - require:
      - file: app-dir
