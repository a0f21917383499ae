# render.rb TEMPLATE.erb PARAMS.json: TEMPLATE rendered the way Puppet renders
# an ERB template (trim_mode '-', each parameter an instance variable, undef
# as nil), on stdout.  Run by 85-template.sh (scripts/check-package), whose
# output is compared with what a real Puppet catalog holds.
require 'erb'
require 'json'
params = JSON.parse(File.read(ARGV[1]))
scope = Object.new
params.each { |name, value| scope.instance_variable_set("@#{name}", value) }
print ERB.new(File.read(ARGV[0]), trim_mode: '-').result(scope.instance_eval { binding })
